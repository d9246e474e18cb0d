# shellcheck shell=bash
# A long command whose output goes to a log, with a progress line on stderr
# at least every PROGRESS_INTERVAL seconds (default 30), so a build of many
# minutes is never silent. Source it; do not run it.

# run_with_progress LOG STEP CMD [ARG...]: runs CMD with its standard output
# and error in LOG and, while it runs, prints every PROGRESS_INTERVAL seconds
#   STEP: 2m30s, 1234 files compiled, now: CC fs/ext4/inode.o
# (files compiled: the LOG lines that start with a kbuild verb such as CC,
# RUSTC, AS, LD or AR; "now": LOG's last line). Returns CMD's exit status.
run_with_progress() {
    local log=$1 step=$2
    shift 2
    local interval=${PROGRESS_INTERVAL:-30}
    local start=$SECONDS pid rc=0
    "$@" > "$log" 2>&1 &
    pid=$!
    local next=$((start + interval))
    while kill -0 "$pid" 2>/dev/null; do
        # Short sleeps: the command's end is noticed within a second.
        sleep 1
        if [ "$SECONDS" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
            progress_line "$log" "$step" $((SECONDS - start)) >&2
            next=$((next + interval))
        fi
    done
    wait "$pid" || rc=$?
    return "$rc"
}

# progress_line LOG STEP SECONDS: the line run_with_progress prints.
progress_line() {
    local log=$1 step=$2 secs=$3 files last
    files=$(grep -cE '^ +(CC|RUSTC|AS|LD|AR|HOSTCC|HOSTRUSTC|BINDGEN|OBJCOPY)( |\[)' "$log" 2>/dev/null || true)
    last=$(tail -n 1 "$log" 2>/dev/null | tr -s ' \t' ' ' | sed 's/^ //' | cut -c1-100)
    printf '%s: %dm%02ds, %d files compiled, now: %s\n' \
        "$step" $((secs / 60)) $((secs % 60)) "${files:-0}" "${last:-(no output yet)}"
}
