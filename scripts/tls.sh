# Services speaking TLS (and Kafka SASL) for the tests of Cellar's TLS clients, with
# certificates generated here: Redis with TLS (standalone, with client certificates required,
# and a cluster), PostgreSQL with ssl=on, Kafka behind a TLS proxy, Kafka with SASL/SCRAM, and
# the object store behind a TLS proxy.
# Sourced by services.sh, after it defines log, SVC_DIR, kafka_answers and ensure_tansu_installed.
# Each reuses a server that already answers on its port; none touches the plain ones.

# One set per machine, not per checkout: a server started from one checkout is reused by the
# tests of another, which must trust the same CA.
TLS_DIR="$HOME/.cache/cellar-tools/test-tls"

# A CA, a server certificate for 127.0.0.1 and localhost, a client certificate (CN `cellar`,
# the PostgreSQL role that logs in by certificate) and a second CA that signed neither, for
# the tests of a wrong CA. Made once per machine: servers started from them are reused by later
# runs.
ensure_tls_material() {
    if [ ! -s "$TLS_DIR/other-ca.crt" ]; then
        log "generating test certificates in $TLS_DIR"
        rm -rf "$TLS_DIR" && mkdir -p "$TLS_DIR"
        (
            set -e
            cd "$TLS_DIR"
            key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
            ca() { # name subject
                key "$1.key"
                openssl req -x509 -new -key "$1.key" -days 3650 -subj "$2" -out "$1.crt" \
                    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
            }
            leaf() { # name subject extensions
                key "$1.key"
                openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
                printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$3" > "$1.ext"
                openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
                    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
                rm -f "$1.csr" "$1.ext"
            }
            ca ca "/CN=Cellar test CA"
            ca other-ca "/CN=Another CA"
            leaf server "/CN=localhost" "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth')"
            leaf client "/CN=cellar" "extendedKeyUsage=clientAuth"
            cat server.crt server.key > server.pem
            chmod 0600 ./*.key
        ) || { log "cannot generate the test certificates"; return 1; }
    fi
    export CELLAR_TEST_TLS_DIR="$TLS_DIR"
}

redis_tls_answers() { # port
    redis-cli --tls --cacert "$TLS_DIR/ca.crt" --cert "$TLS_DIR/client.crt" --key "$TLS_DIR/client.key" \
        -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG
}

start_redis_tls() { # port name further-options...
    local port=$1 name=$2
    shift 2
    redis_tls_answers "$port" && return 0
    log "starting redis with TLS on 127.0.0.1:$port ($name)"
    mkdir -p "$SVC_DIR/$name"
    redis-server --bind 127.0.0.1 --port 0 --tls-port "$port" --save '' --appendonly no --daemonize yes \
        --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
        --tls-ca-cert-file "$TLS_DIR/ca.crt" \
        --pidfile "$SVC_DIR/$name.pid" --logfile "$SVC_DIR/$name.log" --dir "$SVC_DIR/$name" "$@"
    for _ in $(seq 1 50); do
        redis_tls_answers "$port" && return 0
        sleep 0.1
    done
    tail -n 20 "$SVC_DIR/$name.log" >&2
    return 1
}

# Redis with TLS: on 6390 client certificates are optional, on 6391 required; a cluster of
# three masters on 6392-6394 whose bus is TLS too.
ensure_redis_tls() {
    ensure_tls_material || return 1
    start_redis_tls 6390 redis-tls --tls-auth-clients optional || return 1
    start_redis_tls 6391 redis-mtls --tls-auth-clients yes || return 1
    local port nodes=()
    for port in 6392 6393 6394; do
        start_redis_tls "$port" "redis-tls-cluster-$port" --tls-auth-clients optional --tls-cluster yes \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 || return 1
        nodes+=("127.0.0.1:$port")
    done
    local cli=(redis-cli --tls --cacert "$TLS_DIR/ca.crt" -h 127.0.0.1)
    if ! "${cli[@]}" -p 6392 cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
        log "creating the TLS redis cluster"
        "${cli[@]}" --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$SVC_DIR/redis-tls-cluster.log" 2>&1 \
            || { tail -n 20 "$SVC_DIR/redis-tls-cluster.log" >&2; return 1; }
        for _ in $(seq 1 100); do
            "${cli[@]}" -p 6392 cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
            sleep 0.1
        done
    fi
    export CELLAR_TEST_REDIS_TLS="rediss://127.0.0.1:6390"
    export CELLAR_TEST_REDIS_MTLS="rediss://127.0.0.1:6391"
    export CELLAR_TEST_REDIS_TLS_CLUSTER="rediss://127.0.0.1:6392,rediss://127.0.0.1:6393,rediss://127.0.0.1:6394"
    log "redis with TLS: $CELLAR_TEST_REDIS_TLS, client certificates required: $CELLAR_TEST_REDIS_MTLS, cluster: $CELLAR_TEST_REDIS_TLS_CLUSTER"
}

# PostgreSQL with ssl=on on 127.0.0.1:5434, a private server beside the plain one: TCP
# connections must use TLS (a `disable` client is refused), and the role `cellar` logs in by
# its client certificate alone.
ensure_postgres_tls() {
    ensure_tls_material || return 1
    if ! pg_answers 127.0.0.1 5434; then
        local pgbin pgdir
        pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
        if [ -z "$pgbin" ]; then
            log "installing postgresql"
            apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
            pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        fi
        pgdir=$(mktemp -d /tmp/cellar-pg-tls.XXXXXX)
        cp "$TLS_DIR/server.crt" "$TLS_DIR/server.key" "$TLS_DIR/ca.crt" "$pgdir/"
        chmod 0600 "$pgdir/server.key"
        chown -R postgres:postgres "$pgdir"
        log "starting postgresql with ssl=on on 127.0.0.1:5434 in $pgdir"
        su postgres -c "$pgbin/initdb -D $pgdir/data -A trust -U postgres --no-sync" >/dev/null
        cat > "$pgdir/data/pg_hba.conf" <<EOF
local all all trust
hostssl all cellar 127.0.0.1/32 cert
hostssl all all 127.0.0.1/32 trust
EOF
        su postgres -c "$pgbin/pg_ctl -D $pgdir/data -l $pgdir/log -w -o '-c listen_addresses=127.0.0.1 -p 5434 -k $pgdir -c fsync=off -c ssl=on -c ssl_cert_file=$pgdir/server.crt -c ssl_key_file=$pgdir/server.key -c ssl_ca_file=$pgdir/ca.crt' start" >/dev/null \
            || { tail -n 20 "$pgdir/log" >&2; return 1; }
        su postgres -c "psql -q -h $pgdir -p 5434 -c 'create role cellar login superuser'" >/dev/null
        echo "$pgdir" > "$SVC_DIR/postgres-tls.dir"
    fi
    export CELLAR_TEST_POSTGRES_TLS="postgres://postgres@127.0.0.1:5434/postgres"
    log "postgresql with ssl=on: $CELLAR_TEST_POSTGRES_TLS"
}

# A TLS listener on `port` in front of the plain one on `backend`; with `verify=1` clients
# must present a certificate the test CA signed.
start_tls_proxy() { # port backend verify name
    kafka_answers 127.0.0.1 "$1" && return 0
    command -v socat >/dev/null 2>&1 || {
        log "installing socat"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null
    }
    log "starting a TLS proxy on 127.0.0.1:$1 to 127.0.0.1:$2"
    nohup socat "OPENSSL-LISTEN:$1,bind=127.0.0.1,reuseaddr,fork,cert=$TLS_DIR/server.crt,key=$TLS_DIR/server.key,cafile=$TLS_DIR/ca.crt,verify=$3" \
        "TCP:127.0.0.1:$2" >"$SVC_DIR/$4.log" 2>&1 &
    echo $! > "$SVC_DIR/$4.pid"
    for _ in $(seq 1 50); do
        kafka_answers 127.0.0.1 "$1" && return 0
        sleep 0.1
    done
    return 1
}

start_tansu() { # listen-port advertised-port storage name further-options...
    local port=$1 advertised=$2 storage=$3 name=$4
    shift 4
    kafka_answers 127.0.0.1 "$port" && return 0
    nohup tansu broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$advertised" \
        --storage-engine "$storage" --silent "$@" >"$SVC_DIR/$name.log" 2>&1 &
    echo $! > "$SVC_DIR/$name.pid"
    for _ in $(seq 1 50); do
        kafka_answers 127.0.0.1 "$port" && return 0
        sleep 0.1
    done
    tail -n 20 "$SVC_DIR/$name.log" >&2
    return 1
}

# Kafka over TLS: tansu does not terminate TLS itself (0.6.0 takes --cert and --key but serves
# plain TCP), so a broker on 9094 advertises 9093, where socat terminates TLS and requires a
# client certificate signed by the test CA.
ensure_kafka_tls() {
    ensure_tls_material || return 1
    ensure_tansu_installed || return 1
    kafka_answers 127.0.0.1 9094 || log "starting tansu on 127.0.0.1:9094 behind TLS on 9093"
    start_tansu 9094 9093 memory://tansu/ tansu-tls || return 1
    start_tls_proxy 9093 9094 1 kafka-tls-proxy || return 1
    export CELLAR_TEST_KAFKA_TLS="127.0.0.1:9093"
    log "kafka over TLS (client certificate required): $CELLAR_TEST_KAFKA_TLS"
}

# Kafka with SASL/SCRAM over TLS: tansu with --authentication checks SCRAM-SHA-512 and -256
# proofs against credentials in its storage, which only its SQL engines keep, so this broker
# stores in SQLite (.svc/tansu-scram). The user `cellar` (password `cellar-secret`) is created
# while the broker runs without authentication, then the broker restarts requiring it. It
# listens on 9096 and advertises 9095, where socat terminates TLS.
ensure_kafka_sasl() {
    ensure_tls_material || return 1
    ensure_tansu_installed || return 1
    local dir="$SVC_DIR/tansu-scram"
    if ! kafka_answers 127.0.0.1 9096; then
        mkdir -p "$dir"
        if [ ! -e "$dir/users-created" ]; then
            log "creating the SCRAM user of the SASL broker"
            (cd "$dir" && start_tansu 9096 9095 sqlite://tansu.db tansu-scram-setup) || return 1
            local mechanism
            for mechanism in scram512 scram256; do
                tansu user create --broker tcp://127.0.0.1:9096 --mechanism "$mechanism" cellar cellar-secret \
                    >>"$SVC_DIR/tansu-scram-setup.log" 2>&1 || { tail -n 20 "$SVC_DIR/tansu-scram-setup.log" >&2; return 1; }
            done
            kill "$(cat "$SVC_DIR/tansu-scram-setup.pid")" || true
            for _ in $(seq 1 50); do
                kafka_answers 127.0.0.1 9096 || break
                sleep 0.1
            done
            touch "$dir/users-created"
        fi
        log "starting tansu with SASL authentication on 127.0.0.1:9096 behind TLS on 9095"
        (cd "$dir" && start_tansu 9096 9095 sqlite://tansu.db tansu-scram --authentication) || return 1
    fi
    start_tls_proxy 9095 9096 0 kafka-sasl-proxy || return 1
    export CELLAR_TEST_KAFKA_SASL="127.0.0.1:9095"
    export CELLAR_TEST_KAFKA_SASL_USER="cellar"
    export CELLAR_TEST_KAFKA_SASL_PASSWORD="cellar-secret"
    log "kafka with SASL/SCRAM over TLS: $CELLAR_TEST_KAFKA_SASL (user cellar)"
}

# S3 over HTTPS: socat terminates TLS on 8015 in front of the object store ensure_s3 starts.
ensure_s3_tls() {
    ensure_tls_material || return 1
    start_tls_proxy 8015 8014 0 s3-tls-proxy || return 1
    export CELLAR_TEST_S3_TLS="https://127.0.0.1:8015"
    log "s3 over TLS: $CELLAR_TEST_S3_TLS"
}
