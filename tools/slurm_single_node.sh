#!/usr/bin/env bash
# A real single-node Slurm on this machine (slurmctld and slurmd on localhost, munge for authentication),
# then `cggm reproduce --executor slurm` of the ci profile through it, with one job cancelled (scancel)
# while its run trains and resumed by the rerun. `make slurm-test` runs this; docs/slurm.md.
#
# Needs: root (the daemons, /etc/slurm, /etc/munge), Debian/Ubuntu packages slurm-wlm and munge
# (installed with apt-get when missing), and submitit in the Python that runs cggm.
#
#   tools/slurm_single_node.sh [PYTHON] [-- extra `cggm reproduce` arguments, e.g. --only mfeat]
#   tools/slurm_single_node.sh stop        # stop the daemons this script started
#
# Everything it writes lives under $SLURM_TEST_DIR (default /tmp/cggm-slurm): slurm.conf is also copied
# to /etc/slurm/slurm.conf, because sbatch and squeue read it from there.
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/cggm-slurm}
HERE=$(cd "$(dirname "$0")/.." && pwd)

stop() {
    for name in slurmd slurmctld munged; do
        if [ -f "$DIR/$name.pid" ]; then kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true; rm -f "$DIR/$name.pid"; fi
    done
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi

PYTHON=${1:-python3}
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac  # it cds to $DIR
[ "$#" -gt 0 ] && shift
[ "${1:-}" = -- ] && shift
EXTRA=("$@")

if [ "$(id -u)" != 0 ]; then echo "slurm_single_node.sh: needs root (it starts munged, slurmctld and slurmd)" >&2; exit 2; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi
"$PYTHON" -c "import submitit" || { echo "slurm_single_node.sh: $PYTHON lacks submitit: pip install -e '.[slurm]'" >&2; exit 2; }

mkdir -p "$DIR"/{spool,state,log} /run/munge /etc/slurm /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 2>/dev/null
                                chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$DIR/slurm.conf" <<EOF
# written by tools/slurm_single_node.sh: one node, no accounting database, no cgroups
ClusterName=cggmtest
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
JobRequeue=1
# a cancelled job gets SIGTERM, which cggm jobs ignore (preemption), then SIGKILL KillWait seconds later
KillWait=2
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cp "$DIR/slurm.conf" /etc/slurm/slurm.conf

stop
# munged as root: --force (it refuses root otherwise); its socket in /run/munge
munged --force --pid-file "$DIR/munged.pid" --log-file "$DIR/log/munged.log" 2>/dev/null \
    || munged --force
munge -n | unmunge >/dev/null || { echo "munge does not work: see $DIR/log/munged.log" >&2; exit 1; }
slurmctld -c -f /etc/slurm/slurm.conf
slurmd -f /etc/slurm/slurm.conf
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break; sleep 1; done
sinfo || { echo "slurmctld did not start: $DIR/log/slurmctld.log" >&2; tail -20 "$DIR/log/slurmctld.log" >&2; exit 1; }
srun -N1 -n1 hostname >/dev/null || { echo "a one-line job does not run: $DIR/log/slurmd.log" >&2; tail -20 "$DIR/log/slurmd.log" >&2; exit 1; }
echo "single-node Slurm is up ($HOST, $CPUS CPUs, ${MEM_MB} MB)"

# --- the ci profile through it ------------------------------------------------------------------------
RESULTS="$DIR/results"
rm -rf "$RESULTS"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
CGGM=("$PYTHON" -m cggmlib reproduce --profile ci --results "$RESULTS" --executor slurm "${EXTRA[@]}")
cd "$DIR"
"${CGGM[@]}" > "$DIR/first.log" 2>&1 &
FIRST=$!
# a worker run in training (config.json written, no metrics.json yet) whose job is recorded, other than $1:
# "rel job". BraTS first: its runs are the ci profile's longest. The signal must land well before the run
# ends: Slurm delivers a cancel through slurmd, which on a loaded machine takes seconds, and a run that ends
# first completes normally (so a run is taken as soon as it trains, not once it has a checkpoint).
in_training() {
    for config in "$RESULTS"/ci/brats2021/*/seed*/config.json "$RESULTS"/ci/*/*/seed*/config.json; do
        local run rel record
        run=$(dirname "$config")
        [ -f "$config" ] && [ ! -f "$run/metrics.json" ] || continue
        rel=${run#"$RESULTS"/ci/}
        record="$RESULTS/ci/slurm/steps/10_train/$rel.json"
        [ "$rel" != "${1:-}" ] && [ -f "$record" ] || continue
        echo "$rel $("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['job_id'])" "$record")"
        return 0
    done
    return 1
}
# 1. kill (scancel) one job while its run trains: the run fails, the rerun resubmits and resumes it
VICTIM="" rel="" BEST=none
for _ in $(seq 3000); do
    if found=$(in_training); then
        read -r rel VICTIM <<< "$found"
        BEST=$(stat -c %Y "$RESULTS/ci/$rel/best.pt" 2>/dev/null || echo none)  # the best epoch so far, before the cancel
        # Slurm handles this as a cancel: SIGTERM, which cggm jobs ignore (preemption), then SIGKILL after
        # KillWait (2 s in this slurm.conf; docs/slurm.md)
        scancel --signal=KILL "$VICTIM" || echo "scancel $VICTIM failed with $?"
        echo "killed job $VICTIM (scancel --signal=KILL) while $rel was training (no metrics.json)"
        break
    fi
    kill -0 "$FIRST" 2>/dev/null || break
    sleep 0.2
done
# 2. signal another with USR2, the signal submitit's jobs get before their time limit or on preemption
#    (`--signal=USR2@90`): submitit checkpoints and requeues it, same job id, and the requeued job finishes
#    the run without any rerun (Slurm delays a requeued job by about 2 minutes). Only USR2: a SIGTERM sent
#    by scancel to a step is handled by Slurm as the step's cancellation, and the USR2 after it may no
#    longer find the step.
PREEMPTED="" prel=""
for _ in $(seq 3000); do
    if found=$(in_training "$rel"); then
        read -r prel PREEMPTED <<< "$found"
        # Slurm may answer "Job can not be altered now, try again later" while the job starts: retry
        SENT=0
        for _ in $(seq 20); do if scancel --signal=USR2 "$PREEMPTED" 2>/dev/null; then SENT=1; break; fi; sleep 0.5; done
        if [ "$SENT" = 1 ]; then echo "sent USR2 to job $PREEMPTED while $prel was training"
        else echo "scancel --signal=USR2 $PREEMPTED failed 20 times: the requeue is not exercised" >&2; PREEMPTED=""; fi
        break
    fi
    kill -0 "$FIRST" 2>/dev/null || break
    sleep 0.2
done
set +e
wait "$FIRST"; FIRST_RC=$?
set -e
echo "first reproduce ended with $FIRST_RC (1 expected: the cancelled run failed)"
"$PYTHON" -m cggmlib reproduce --profile ci --results "$RESULTS" --status "${EXTRA[@]}" | tee "$DIR/status_after_cancel.log" || true
"${CGGM[@]}" > "$DIR/rerun.log" 2>&1
echo "rerun: $(tail -1 "$DIR/rerun.log")"
"$PYTHON" -m cggmlib reproduce --profile ci --results "$RESULTS" --status "${EXTRA[@]}" | tee "$DIR/status_final.log"
[ -n "$VICTIM" ] || { echo "no job was caught training: nothing cancelled" >&2; exit 1; }
if [ -n "$PREEMPTED" ]; then
    grep -qE "ran .* 10_train:$(echo "$prel" | sed 's/[.]/[.]/g')\$" "$DIR/first.log" \
        || { echo "the preempted job $PREEMPTED ($prel) did not finish its run after the requeue: $DIR/first.log" >&2; exit 1; }
    grep -q "DUE TO JOB REQUEUE" "$RESULTS/ci/slurm/jobs/$PREEMPTED/${PREEMPTED}_0_log.err" \
        || { echo "job $PREEMPTED was not requeued: $RESULTS/ci/slurm/jobs/$PREEMPTED/" >&2; exit 1; }
    echo "ok: job $PREEMPTED, signalled, was requeued by submitit and finished $prel under the same job id"
else
    echo "note: no second run was caught training, so the requeue was not exercised" >&2
fi
grep -qE "failed +$VICTIM +10_train:$(echo "$rel" | sed 's/[.]/[.]/g') .*log .*_log[.]err" "$DIR/status_after_cancel.log" \
    || { echo "--status did not list the killed run $rel as failed with its log" >&2; exit 1; }
grep -q "submitted .* 10_train:$(echo "$rel" | sed 's/[.]/[.]/g')\$" "$DIR/rerun.log" \
    || { echo "the rerun did not resubmit the cancelled run $rel" >&2; exit 1; }
# evidence of a resume rather than a restart: best.pt (written at the end of an improving epoch) from before
# the cancel is still there; informative only, since a later epoch that improves rewrites it legitimately
if [ "$BEST" != none ] && [ "$(stat -c %Y "$RESULTS/ci/$rel/best.pt")" = "$BEST" ]; then
    HOW="resumed: the best.pt written before the cancel was kept, the first epoch was not trained again"
else
    HOW="best.pt was written after the cancel (a later epoch improved, or no epoch had ended before it)"
fi
echo "ok: the cancelled run $rel was resubmitted and finished; $HOW; logs and status in $DIR"

# 3. the same results folder as the local executor: every run's configuration key and metrics.json, every
#    table (SLURM_TEST_LOCAL_RESULTS: a local results root of the same code and profile, run first if absent)
LOCAL=${SLURM_TEST_LOCAL_RESULTS:-$DIR/results_local}
if [ ! -d "$LOCAL/ci" ]; then
    "$PYTHON" -m cggmlib reproduce --profile ci --results "$LOCAL" "${EXTRA[@]}" > "$DIR/local.log" 2>&1 \
        || { echo "the local ci run failed: $DIR/local.log" >&2; exit 1; }
fi
"$PYTHON" -m cggmlib reproduce --profile ci --results "$RESULTS" --same-as "$LOCAL" "${EXTRA[@]}" | tee "$DIR/same_as_local.log" \
    || { echo "the Slurm results differ from the local executor's: $DIR/same_as_local.log" >&2; exit 1; }
echo "ok: the Slurm results folder is the same as the local executor's ($LOCAL)"
[ "${SLURM_TEST_KEEP:-0}" = 1 ] || stop
