# bench/lib.sh - process and port helpers shared by the benchmark scripts (sourced).
# Needs /proc (Linux). `cleanup` and `nginx_common` use the sourcing script's globals
# (`pids`, `work`, `KEEP_TMP`); each script sets its own EXIT trap.

# alive PID: true if PID exists and is not a zombie.
alive() {
    local line
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    line=${line##*) }
    [[ ${line:0:1} != Z ]]
}

# tree_pids PID: PID and all its descendants, space separated.
tree_pids() {
    local -A kids=()
    local f line rest pid ppid cur
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        pid=${line%% *}
        rest=${line##*) }
        ppid=${rest#* }
        ppid=${ppid%% *}
        kids[$ppid]+=" $pid"
    done
    local queue=("$1") out=()
    while ((${#queue[@]})); do
        cur=${queue[0]}
        queue=("${queue[@]:1}")
        out+=("$cur")
        for pid in ${kids[$cur]:-}; do
            queue+=("$pid")
        done
    done
    echo "${out[*]}"
}

# stop_tree PID: SIGTERM the process, wait up to 5 s for it and its
# descendants to exit, then SIGKILL whatever is left. Idempotent.
stop_tree() {
    local top=$1 tree p i any
    if ! alive "$top"; then
        wait "$top" 2>/dev/null || true
        return 0
    fi
    tree=$(tree_pids "$top")
    kill -TERM "$top" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        any=0
        for p in $tree; do
            if alive "$p"; then any=1; fi
        done
        ((any)) || break
        sleep 0.1
    done
    for p in $tree; do
        if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    wait "$top" 2>/dev/null || true
    return 0
}

port_busy() {
    if command -v ss >/dev/null 2>&1; then
        ss -tan "sport = :$1" 2>/dev/null | awk 'NR > 1 { found = 1 } END { exit !found }'
    else
        (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# pick_port VAR: store a currently unused 127.0.0.1 TCP port in VAR.
# The range sits below the default ephemeral range (32768-60999).
pick_port() {
    local p i
    for ((i = 0; i < 1000; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ -n ${chosen_ports[$p]:-} ]] && continue
        port_busy "$p" && continue
        chosen_ports[$p]=1
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "could not find a free port"
}

# cpu_ticks PID...: summed utime+stime (clock ticks) of the given processes.
cpu_ticks() {
    local total=0 p line
    local -a f
    for p in "$@"; do
        { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
        read -r -a f <<<"${line##*) }"
        # f[0] is field 3 (state); utime/stime are fields 14/15.
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# foreign_ticks: CPU ticks (utime+stime+cutime+cstime) of every process that
# is not this script or one of its descendants. Counting the reaped-children
# times too means short-lived processes (compilers, test binaries) show up in
# a surviving ancestor. The delta over a window is CPU used by others.
foreign_ticks() {
    local -A ours=()
    local p f line total=0
    local -a fl
    for p in $(tree_pids $$); do
        ours[$p]=1
    done
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        p=${line%% *}
        [[ -n ${ours[$p]:-} ]] && continue
        read -r -a fl <<<"${line##*) }"
        total=$((total + fl[11] + fl[12] + fl[13] + fl[14]))
    done
    echo "$total"
}

# nginx_common DIR: directives every nginx instance needs to stay in DIR.
nginx_common() {
    local dir=$1 m
    echo "pid $dir/nginx.pid;"
    echo "error_log $dir/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "    access_log off;"
    echo "    keepalive_requests 1000000;"
    echo "    keepalive_timeout 75s;"
    echo "    client_body_temp_path $dir/client_body;"
    for m in proxy fastcgi uwsgi scgi; do
        if [[ $nginx_modules != *"--without-http_${m}_module"* ]]; then
            echo "    ${m}_temp_path $dir/${m}_temp;"
        fi
    done
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in ${pids[@]+"${pids[@]}"}; do
        stop_tree "$p"
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "temp dir kept: $work"
    else
        rm -rf -- "$work"
    fi
    exit "$rc"
}

# bench_pki DIR SERVER_NAME CA_NAME: a CA, a server certificate for SERVER_NAME (and
# 127.0.0.1) and a client certificate (CN=client, SPIFFE URI SAN), all EC P-256, in DIR as
# ca.pem, server.pem/.key, client.pem/.key. openssl's output goes to DIR/openssl.log; returns
# non-zero if openssl failed.
bench_pki() {
    local pki=$1 server=$2 ca_name=$3 leaf subj
    mkdir -p "$pki"
    chmod 755 "$pki"
    printf '%s\n' "basicConstraints = critical, CA:TRUE" "keyUsage = critical, keyCertSign, cRLSign" \
        "subjectKeyIdentifier = hash" >"$pki/ca.ext"
    printf '%s\n' "basicConstraints = critical, CA:FALSE" "keyUsage = critical, digitalSignature" \
        "extendedKeyUsage = serverAuth" "subjectAltName = DNS:$server, IP:127.0.0.1" \
        "authorityKeyIdentifier = keyid" >"$pki/server.ext"
    printf '%s\n' "basicConstraints = critical, CA:FALSE" "keyUsage = critical, digitalSignature" \
        "extendedKeyUsage = clientAuth" "subjectAltName = URI:spiffe://test/ns/default/sa/client" \
        "authorityKeyIdentifier = keyid" >"$pki/client.ext"
    {
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/ca.key"
        openssl req -new -key "$pki/ca.key" -subj "/CN=$ca_name" -out "$pki/ca.csr"
        openssl x509 -req -in "$pki/ca.csr" -signkey "$pki/ca.key" -days 2 -sha256 \
            -extfile "$pki/ca.ext" -out "$pki/ca.pem"
        for leaf in server client; do
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$leaf.key"
            if [[ $leaf == server ]]; then subj="/CN=$server"; else subj="/CN=client"; fi
            openssl req -new -key "$pki/$leaf.key" -subj "$subj" -out "$pki/$leaf.csr"
            openssl x509 -req -in "$pki/$leaf.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
                -CAcreateserial -days 2 -sha256 -extfile "$pki/$leaf.ext" -out "$pki/$leaf.pem"
            openssl verify -CAfile "$pki/ca.pem" "$pki/$leaf.pem"
        done
    } >"$pki/openssl.log" 2>&1
}

# tail_log FILE: the last lines of a log file, indented, on stderr (uses the script's `log`).
tail_log() {
    [[ -s $1 ]] || return 0
    log "--- $1"
    tail -n 15 -- "$1" | sed 's/^/    | /' >&2
}

# start_proxy_pair NAME: legate (quick mode, one worker) and nginx (one worker process) side by
# side on core $PROXY_CPU, both proxying one nginx upstream ("ok\n") on core $LOAD_CPU, each on
# a free port, in a new temp dir ($work, legate-NAME.*) cleaned up on exit. Waits until all
# three answer. Sets up_port, legate_port, nginx_port, legate_pid and nginx_worker (the proxy's
# worker process, not its master). nginx keeps $NGINX_KEEPALIVE (64) idle upstream connections,
# legate its default (1,024). Uses the sourcing script's $LEGATE_BIN, $KEEP_TMP,
# $nginx_modules and `die`. (bench/cpu_split.sh, bench/rounds.sh)
start_proxy_pair() {
    local port i master
    declare -ga pids=()
    declare -gA chosen_ports=()
    work=$(mktemp -d "${TMPDIR:-/tmp}/legate-$1.XXXXXX")
    chmod 711 "$work"
    trap cleanup EXIT INT TERM
    pick_port up_port
    pick_port legate_port
    pick_port nginx_port
    single_nginx upstream "$LOAD_CPU" "
    server { listen 127.0.0.1:$up_port backlog=4096; location / { return 200 \"ok\\n\"; } }"
    single_nginx proxy "$PROXY_CPU" "
    upstream backend { server 127.0.0.1:$up_port; keepalive ${NGINX_KEEPALIVE:-64}; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
    master=${pids[-1]}
    taskset -c "$PROXY_CPU" "$LEGATE_BIN" http --listen "127.0.0.1:$legate_port" \
        --upstream "http://127.0.0.1:$up_port" --admin off --access-log off --workers 1 \
        >"$work/legate.log" 2>&1 &
    pids+=("$!")
    legate_pid=$!
    for port in "$up_port" "$legate_port" "$nginx_port"; do
        for ((i = 0; i < 100; i++)); do
            curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
            sleep 0.1
        done
        curl -fs -o /dev/null "http://127.0.0.1:$port/" || die "nothing answers on 127.0.0.1:$port"
    done
    nginx_worker=$(tree_pids "$master" | awk '{print $2}')
    [[ -n $nginx_worker ]] || die "no nginx worker process found"
}

# single_nginx NAME CPU BODY: an nginx with one worker process (room for 8,192 descriptors) in
# $work/NAME, pinned to CPU, its http block's servers in BODY; its pid joins $pids.
single_nginx() {
    local name=$1 cpu=$2 body=$3 dir=$work/$1
    mkdir -p "$dir"
    {
        echo "worker_processes 1;"
        echo "worker_rlimit_nofile 8192;"
        nginx_common "$dir"
        printf '%s\n}\n' "$body"
    } >"$dir/nginx.conf"
    nginx -t -q -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>&1 ||
        die "$name: nginx -t rejected $dir/nginx.conf"
    taskset -c "$cpu" nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" \
        -g 'daemon off;' >"$dir/stderr.log" 2>&1 &
    pids+=("$!")
}
