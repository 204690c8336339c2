#!/usr/bin/env bash
# Start a single-node SLURM cluster (Debian slurm-wlm + munge) on this machine, for tests/test_slurm.py and CI.
# Idempotent: does nothing if the controller already answers.
set -euo pipefail
if sinfo >/dev/null 2>&1; then exit 0; fi
host=$(hostname)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=drllm-ci
SlurmctldHost=$host
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host Default=NO MaxTime=INFINITE State=UP
CONF
chown -R munge:munge /run/munge 2>/dev/null || true
[ -f /etc/munge/munge.key ] || (dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key)
runuser -u munge -- /usr/sbin/munged --force
setsid slurmctld -D > /var/log/slurm/slurmctld.out 2>&1 < /dev/null &
setsid slurmd -D > /var/log/slurm/slurmd.out 2>&1 < /dev/null &
for _ in $(seq 30); do
  if sinfo -h -o %T 2>/dev/null | grep -q idle; then exit 0; fi
  sleep 1
done
echo "SLURM did not come up; see /var/log/slurm/" >&2
exit 1
