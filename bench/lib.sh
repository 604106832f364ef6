# shellcheck shell=bash
# Shared by bench/run and bench/instructions (sourced, not run): logging, the cleanup of
# everything started, tool installation, waiting for a server, the upstream nginx.
#
# The sourcing script sets LOG_TAG (its name in log lines) and, once it has one, RUN (its
# output folder, named when it fails).

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${LOG_TAG:-bench}" -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: everything started is recorded in PIDS and stopped on exit, whatever the exit.
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    local waited=0
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 50 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        log "failed (exit $status); logs in ${RUN:-bench/out}"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Tools
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

# need_tools COMMAND:PACKAGE...: installs with apt-get the packages of the commands that are
# missing. Sets NGINX to nginx's path (Debian puts it in /usr/sbin).
need_tools() {
    local missing=() spec
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null || [ -x "/usr/sbin/${spec%%:*}" ] || missing+=("${spec#*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} with apt-get"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # shellcheck disable=SC2034 # read by the sourcing script
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

wait_http() {
    local url=$1 _
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$url did not answer within 10 s"
}

# ---------------------------------------------------------------------------------------------
# The upstream (DIRECT): nginx with one worker, a fixed 1 KiB answer to any method (a POST body
# is read and discarded), a sink for uploads, and /big, a sparse file of STREAM_BYTES (none when
# 0) for downloads.
#
#   write_upstream_config DIR PORT
NGINX_TEMPS='
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;'

write_upstream_config() {
    local dir=$1 port=$2 body
    mkdir -p "$dir/temp"
    chmod 0777 "$dir" "$dir/temp"
    body=$(head -c 1024 /dev/zero | tr '\0' 'a')
    if [ "${STREAM_BYTES:-0}" -gt 0 ]; then
        truncate -s "$STREAM_BYTES" "$dir/big.bin"
        chmod 0644 "$dir/big.bin"
    fi
    cat >"$dir/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $NGINX_TEMPS
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type text/plain;
    sendfile on;
    server {
        listen 127.0.0.1:$port;
        location / {
            return 200 "$body";
        }
        location = /sink {
            client_max_body_size 0;
            return 200 "ok\n";
        }
        location = /big {
            alias $dir/big.bin;
        }
    }
}
CONF
}
