# Starts, on loopback, the services Cellar's tests need, reusing any that already answer.
# Source it: it exports the CELLAR_TEST_* variables the integration tests that need a service
# read (they are #[ignore]d by default; scripts/test.sh runs them with --include-ignored).
# State, logs and pid files live in .svc/ at the project root.

CELLAR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SVC_DIR="$CELLAR_ROOT/.svc"
mkdir -p "$SVC_DIR"

log() { echo "[services] $*" >&2; }

# System packages the build needs: protoc for the gRPC code generation; cmake and curl's
# headers for librdkafka, which rdkafka builds from source, and OpenSSL's for its TLS and SASL.
ensure_build_packages() {
    local missing=()
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || missing+=(libcurl4-openssl-dev)
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

pg_answers() { # host port
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$1" -p "$2" -t 2
}

# PostgreSQL: use 127.0.0.1:5432 when it answers, else start a private server on 5433.
ensure_postgres() {
    if pg_answers 127.0.0.1 5432; then
        export CELLAR_TEST_POSTGRES="postgres://postgres@127.0.0.1:5432/postgres"
    elif pg_answers 127.0.0.1 5433; then
        export CELLAR_TEST_POSTGRES="postgres://postgres@127.0.0.1:5433/postgres"
    else
        local pgbin
        pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
        if [ -z "$pgbin" ]; then
            log "installing postgresql"
            apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
            pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        fi
        local pgdir
        pgdir=$(mktemp -d /tmp/cellar-pg.XXXXXX)
        chown postgres:postgres "$pgdir"
        log "starting postgresql on 127.0.0.1:5433 in $pgdir"
        su postgres -c "$pgbin/initdb -D $pgdir/data -A trust -U postgres --no-sync" >/dev/null
        su postgres -c "$pgbin/pg_ctl -D $pgdir/data -l $pgdir/log -w -o '-c listen_addresses=127.0.0.1 -p 5433 -k $pgdir -c fsync=off' start" >/dev/null
        echo "$pgdir" > "$SVC_DIR/postgres.dir"
        export CELLAR_TEST_POSTGRES="postgres://postgres@127.0.0.1:5433/postgres"
    fi
    log "postgresql: $CELLAR_TEST_POSTGRES"
}

kafka_answers() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# tansu, a Kafka-wire-compatible broker: installed once per machine into its own root, started
# in memory on 127.0.0.1:9092 unless something already answers there. The tests need a broker,
# not a fast one: built at opt-level 1 without debug info it installs in a fraction of a full
# release build's time and still runs the Kafka tests well within their timeouts. Its SQLite
# storage (`libsql`) is built in too: only an SQL storage keeps SCRAM credentials, which the
# SASL test broker (scripts/tls.sh) checks; the root is named after the features, so an
# earlier install without them is not taken for this one.
TANSU_ROOT="$HOME/.cache/cellar-tools/tansu-0.6.0-dynostore-libsql"
ensure_tansu_installed() {
    export PATH="$TANSU_ROOT/bin:$HOME/.cargo/bin:$PATH"
    if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
        log "installing tansu 0.6.0 (once per machine)"
        # Its own temporary target directory: the workspace's would be locked by its build.
        env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false \
            cargo install --locked tansu@0.6.0 --features dynostore,libsql --root "$TANSU_ROOT" -j2 \
            >"$SVC_DIR/tansu-install.log" 2>&1 \
            || { tail -n 30 "$SVC_DIR/tansu-install.log" >&2; return 1; }
    fi
}

ensure_kafka() {
    if ! kafka_answers 127.0.0.1 9092; then
        ensure_tansu_installed
        log "starting tansu on 127.0.0.1:9092"
        nohup tansu broker --listener-url tcp://127.0.0.1:9092 \
            --advertised-listener-url tcp://127.0.0.1:9092 \
            --storage-engine memory://tansu/ >"$SVC_DIR/tansu.log" 2>&1 &
        echo $! > "$SVC_DIR/tansu.pid"
        for _ in $(seq 1 50); do
            kafka_answers 127.0.0.1 9092 && break
            sleep 0.1
        done
        kafka_answers 127.0.0.1 9092 || { tail -n 20 "$SVC_DIR/tansu.log" >&2; return 1; }
    fi
    export CELLAR_TEST_KAFKA="127.0.0.1:9092"
    log "kafka: $CELLAR_TEST_KAFKA"
}
source "$CELLAR_ROOT/scripts/dynamodb.sh"
source "$CELLAR_ROOT/scripts/tls.sh"

# Redis: use 127.0.0.1:6379 when it answers, else install (once) and start one there.
ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
    if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
        log "starting redis on 127.0.0.1:6379"
        redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes \
            --pidfile "$SVC_DIR/redis.pid" --logfile "$SVC_DIR/redis.log" --dir "$SVC_DIR"
        for _ in $(seq 1 50); do
            redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && break
            sleep 0.1
        done
    fi
    export CELLAR_TEST_REDIS="redis://127.0.0.1:6379"
    log "redis: $CELLAR_TEST_REDIS"
}

s3_answers() { # host port
    # An S3-compatible server answers an unsigned request with an XML error (AccessDenied).
    curl -s --max-time 2 "http://$1:$2/" 2>/dev/null | grep -q '<Error>'
}

# s3s-fs, an S3-compatible server over a local directory (a bucket is a subdirectory):
# installed once into ~/.cargo/bin (about 2 minutes from source), in its own temporary target
# directory.
ensure_s3_installed() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v s3s-fs >/dev/null 2>&1; then
        log "installing s3s-fs 0.14.1 (once per machine, about 2 minutes)"
        env -u CARGO_TARGET_DIR cargo install --locked s3s-fs@0.14.1 --features binary -j2 \
            >"$SVC_DIR/s3s-install.log" 2>&1 \
            || { tail -n 30 "$SVC_DIR/s3s-install.log" >&2; return 1; }
    fi
}

# Object storage for the S3 tests: s3s-fs on 127.0.0.1:8014 with the access key AK and the
# secret key SECRET, its data in a fresh temporary directory, unless something S3-compatible
# already answers there.
ensure_s3() {
    if ! s3_answers 127.0.0.1 8014; then
        ensure_s3_installed
        local s3dir
        s3dir=$(mktemp -d /tmp/cellar-s3.XXXXXX)
        echo "$s3dir" > "$SVC_DIR/s3.dir"
        log "starting s3s-fs on 127.0.0.1:8014 in $s3dir"
        # Run from its data directory: s3s-fs resolves paths against its working directory on
        # every request, so a server started from a checkout that is later deleted fails them all.
        (cd "$s3dir" && exec nohup s3s-fs --host 127.0.0.1 --port 8014 --access-key AK \
            --secret-key SECRET "$s3dir" >"$SVC_DIR/s3s-fs.log" 2>&1) &
        echo $! > "$SVC_DIR/s3s-fs.pid"
        for _ in $(seq 1 50); do
            s3_answers 127.0.0.1 8014 && break
            sleep 0.1
        done
        s3_answers 127.0.0.1 8014 || { tail -n 20 "$SVC_DIR/s3s-fs.log" >&2; return 1; }
    fi
    export CELLAR_TEST_S3="http://127.0.0.1:8014"
    log "s3: $CELLAR_TEST_S3"
}

# A virtualenv with the Python client (from ./python), its test dependencies and Feast 0.67
# (whose own client the tests point at Cellar), made once per machine and brought up to date
# with the package on every run.
ensure_python_env() {
    PY_ENV="${PY_ENV:-$HOME/.cache/cellar-py-env}"
    if [ ! -x "$PY_ENV/bin/python" ]; then
        log "creating the Python environment $PY_ENV"
        python3 -m venv "$PY_ENV" 2>/dev/null || {
            apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$PY_ENV"
        }
    fi
    "$PY_ENV/bin/pip" install -q --disable-pip-version-check \
        "$(dirname "${BASH_SOURCE[0]}")/../python[test]" 'feast==0.67.*' >&2
    export PY_ENV
}

# Debian's Chromium and its WebDriver, which the web console's browser tests drive headless.
ensure_browser() {
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        log "installing chromium and chromium-driver"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
    export CELLAR_TEST_CHROMEDRIVER="$(command -v chromedriver)"
    export CELLAR_TEST_CHROMIUM="$(command -v chromium)"
    log "browser: $CELLAR_TEST_CHROMIUM"
}
