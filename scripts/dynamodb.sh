# The DynamoDB API for the DynamoDB backend's tests: dynalite (an open-source reimplementation
# of DynamoDB, in memory here) on 127.0.0.1:8000, unless a DynamoDB-compatible server already
# answers there. dynalite has no TTL (UpdateTimeToLive), which the store tolerates.
# Sourced by services.sh, after it defines log and SVC_DIR.

DYNALITE_VERSION=4.0.0

dynamodb_answers() { # host port
    # Any DynamoDB-compatible server answers an unsigned request with a JSON error naming its
    # type; anything else on the port does not count.
    curl -s --max-time 2 -X POST "http://$1:$2/" \
        -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
        -H 'Content-Type: application/x-amz-json-1.0' -d '{}' 2>/dev/null | grep -q '__type'
}

# dynalite installed once into .svc/dynalite, started on 127.0.0.1:8000.
ensure_dynamodb() {
    if ! dynamodb_answers 127.0.0.1 8000; then
        local bin="$SVC_DIR/dynalite/node_modules/.bin/dynalite"
        if [ ! -e "$bin" ]; then
            if ! command -v npm >/dev/null 2>&1; then
                log "installing nodejs and npm"
                apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
            fi
            log "installing dynalite $DYNALITE_VERSION"
            npm install --prefix "$SVC_DIR/dynalite" --no-audit --no-fund "dynalite@$DYNALITE_VERSION" \
                >"$SVC_DIR/dynalite-install.log" 2>&1 \
                || { tail -n 30 "$SVC_DIR/dynalite-install.log" >&2; return 1; }
        fi
        log "starting dynalite on 127.0.0.1:8000"
        nohup node "$bin" --host 127.0.0.1 --port 8000 \
            --createTableMs 0 --deleteTableMs 0 --updateTableMs 0 >"$SVC_DIR/dynalite.log" 2>&1 &
        echo $! > "$SVC_DIR/dynalite.pid"
        for _ in $(seq 1 50); do
            dynamodb_answers 127.0.0.1 8000 && break
            sleep 0.1
        done
        dynamodb_answers 127.0.0.1 8000 || { tail -n 20 "$SVC_DIR/dynalite.log" >&2; return 1; }
    fi
    export CELLAR_TEST_DYNAMODB="http://127.0.0.1:8000"
    log "dynamodb: $CELLAR_TEST_DYNAMODB"
}
