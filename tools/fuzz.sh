#!/usr/bin/env bash
# Runs the fuzz targets of ocean_liner::verify::fuzz under AFL++ (cargo-afl, on stable
# Rust), each for MINUTES, JOBS at a time. New inputs that reach new paths are added to
# fuzz/corpus/<target>/ (at most 200 per run, smallest first); every crash or hang is
# copied to fuzz/crashes/<target>/, where `cargo test --test fuzz_corpus` replays it for
# good. Prints one line per target: executions, paths found, crashes, hangs.
#
#   tools/fuzz.sh [MINUTES] [TARGET...]     (env: JOBS=2, OUT=/var/tmp/ol-fuzz)
#
# The first run installs cargo-afl (crates.io) and builds its AFL++ (a few minutes).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-10}
shift || true
jobs=${JOBS:-2}
out=${OUT:-/var/tmp/ol-fuzz}
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --locked --version '^0.15'
fi
# cargo-afl builds its own AFL++ once (afl-fuzz and the runtime it links); it refuses to
# build it again, which is fine.
cargo afl config --build >/dev/null 2>&1 || true
(cd "$here/fuzz" && cargo afl build --release --quiet)
bin=$here/fuzz/target/release/ocean-liner-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("$bin" --list)
mkdir -p "$out"
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
    AFL_NO_AFFINITY=1 AFL_SKIP_CRASHES=1
run() {
    local t=$1
    rm -rf "${out:?}/$t"
    cargo afl fuzz -V $((minutes * 60)) -t 1000 -m none -i "$here/fuzz/corpus/$t" \
        -o "$out/$t" -- "$bin" "$t" >"$out/$t.log" 2>&1 || true
}
running=0
for t in "${targets[@]}"; do
    run "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true
printf '| target | minutes | executions | execs/s | paths | crashes | hangs |\n|---|---|---|---|---|---|---|\n'
for t in "${targets[@]}"; do
    stats=$out/$t/default/fuzzer_stats
    if [ ! -f "$stats" ]; then
        echo "| $t | - | no stats: see $out/$t.log | | | | |"
        continue
    fi
    field() { awk -v k="$1" '$1 == k {print $3}' "$stats"; }
    crashes=$(field saved_crashes)
    hangs=$(field saved_hangs)
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$minutes" "$(field execs_done)" \
        "$(field execs_per_sec)" "$(field corpus_count)" "$crashes" "$hangs"
    for kind in crashes hangs; do
        for f in "$out/$t/default/$kind"/id*; do
            [ -f "$f" ] || continue
            mkdir -p "$here/fuzz/crashes/$t"
            cp "$f" "$here/fuzz/crashes/$t/$(sha1sum "$f" | cut -c1-16)"
        done
    done
    # Grow the kept corpus with the smallest new inputs (`head` closing the pipe early is
    # not a failure).
    find "$out/$t/default/queue" -maxdepth 1 -type f -name 'id*' ! -name '*orig*' \
        -printf '%s %p\n' 2>/dev/null | sort -n | head -200 | while read -r _ f; do
        cp "$f" "$here/fuzz/corpus/$t/$(sha1sum "$f" | cut -c1-16)"
    done || true
done
