# bench/lib.sh - process and port helpers shared by the benchmark scripts (sourced).
# Needs /proc (Linux). The sourcing script defines its own cleanup and temp dir.

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
