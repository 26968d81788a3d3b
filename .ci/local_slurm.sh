#!/usr/bin/env bash
# A one-node SLURM on this machine, for the SLURM launcher's test (tests/test_slurm.py) and for trying
# hydra/launcher=submitit_slurm before a real cluster: Debian's slurm-wlm and munge, a slurm.conf for
# this host on 127.0.0.1 with one partition ("local", every core), then munged, slurmctld and slurmd.
# Accounting is off (no slurmdbd): see the README's cluster section for what that changes.
# Needs root (or sudo) and Debian's packages. Does nothing when a SLURM partition already answers.
#
#     sudo .ci/local_slurm.sh        # then: sinfo; p2pllm-sim -m ... hydra/launcher=submitit_slurm
set -euo pipefail
if command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h -o %P 2>/dev/null | grep -q .; then
    sinfo
    exit 0
fi
run_as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    run_as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive run_as_root apt-get install -y -qq slurm-wlm munge >/dev/null
fi
host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
run_as_root mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/log/munge
run_as_root chown munge:munge /run/munge /var/log/munge
run_as_root tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=local Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x munged >/dev/null || run_as_root runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || run_as_root /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || run_as_root /usr/sbin/slurmd
for _ in $(seq 60); do
    if timeout 10 sinfo -h -o %t 2>/dev/null | grep -q -E '^(idle|mix|alloc)'; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "local SLURM did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
