# Sourced by the scripts that profile a running gatehouse (code-order.sh, pgo-profile.sh):
# waiting for it to answer, sending it requests, and stopping it so that it writes its
# profile on the way out.

# Waits up to 300 s for `url` to answer (a binary under valgrind starts slowly).
wait_for() {
    local url=$1
    for _ in $(seq 300); do
        curl -s -o /dev/null "$url" && return 0
        sleep 1
    done
    echo "$(basename "$0"): $url never answered" >&2
    return 1
}

# Requests `url` `count` times over one keep-alive connection.
requests() {
    local url=$1 count=$2 args=()
    for _ in $(seq "$count"); do args+=("$url"); done
    curl -s "${args[@]}" > /dev/null || true
}

# SIGTERM to a process's children (the mesh demo's sidecars), `grace` seconds for them to
# drain and write their profiles, then SIGTERM to the process itself, and waits for it.
stop_tree() {
    local pid=$1 grace=$2 child
    for child in $(pgrep -P "$pid" || true); do
        kill -TERM "$child" 2>/dev/null || true
    done
    sleep "$grace"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
