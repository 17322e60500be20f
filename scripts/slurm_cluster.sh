#!/usr/bin/env bash
# A single-node SLURM cluster on loopback, for tests and for trying sweeps on one machine.
#
#   scripts/slurm_cluster.sh install   # Debian packages (root): slurmctld slurmd slurm-client munge slurmdbd mariadb-server
#   scripts/slurm_cluster.sh start     # a few seconds; prints the SLURM_CONF to export
#   scripts/slurm_cluster.sh status
#   scripts/slurm_cluster.sh stop      # stops exactly the daemons 'start' started (by PID)
#
# Everything lives under $O2O_SLURM_DIR (default /tmp/o2o-slurm). Accounting
# (slurmdbd + MariaDB) is on, so that sacct, which submitit polls, works.
set -euo pipefail

DIR=${O2O_SLURM_DIR:-/tmp/o2o-slurm}
DB_PORT=${O2O_SLURM_DB_PORT:-33061}
CLUSTER=o2o
HOST=$(hostname -s)
export SLURM_CONF=$DIR/etc/slurm.conf

log() { echo "[slurm_cluster] $*" >&2; }
trap 'log "failed at line $LINENO: $BASH_COMMAND (logs in $DIR/log)"; tail -n 5 "$DIR"/log/* 2>/dev/null >&2' ERR

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $what"; return 1
}

started() {  # started NAME PID
  echo "$1 $2" >>"$DIR/pids"
}

install_packages() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

write_configs() {
  mkdir -p "$DIR"/{etc,state,spool,log,run}
  chmod 755 "$DIR"  # the mysql and munge users must reach their folders inside
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  cat >"$SLURM_CONF" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobRequeue=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=o2o
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munge already answers; using it"; return
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground >"$DIR/log/munged.log" 2>&1 &
  started munged $!
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
  local db=$DIR/db sock=$DIR/mysqld
  mkdir -p "$sock" && chown mysql:mysql "$sock"
  if [ ! -d "$db/mysql" ]; then
    mkdir -p "$db" && chown mysql:mysql "$db"
    mariadb-install-db --no-defaults --datadir="$db" --user=mysql >"$DIR/log/mariadb-install.log" 2>&1 \
      || { log "mariadb-install-db failed"; tail -n 20 "$DIR/log/mariadb-install.log" >&2; return 1; }
  fi
  /usr/sbin/mariadbd --no-defaults --datadir="$db" --user=mysql --socket="$sock/mysqld.sock" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file="$sock/mysqld.pid" >"$DIR/log/mariadb.log" 2>&1 &
  started mariadbd $!
  wait_for 30 mariadb mariadb --socket="$sock/mysqld.sock" -e 'select 1'
  mariadb --socket="$sock/mysqld.sock" <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'o2o';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'o2o';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurm() {
  slurmdbd -D >"$DIR/log/slurmdbd.out" 2>&1 &
  started slurmdbd $!
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  slurmctld -D -i >"$DIR/log/slurmctld.out" 2>&1 &
  started slurmctld $!
  slurmd -D >"$DIR/log/slurmd.out" 2>&1 &
  started slurmd $!
  wait_for 30 "an idle node" sh -c "sinfo -h -o %t | grep -q idle"
}

stop() {
  [ -f "$DIR/pids" ] || { log "nothing started here ($DIR/pids missing)"; return 0; }
  tac "$DIR/pids" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $name ($pid)"
    fi
  done
  rm -f "$DIR/pids"
}

case "${1:-}" in
  install) install_packages ;;
  start)
    command -v slurmctld >/dev/null || { log "SLURM is not installed: run '$0 install' (root)"; exit 1; }
    [ -f "$DIR/pids" ] && stop
    write_configs
    start_munge
    start_mariadb
    start_slurm
    echo "export SLURM_CONF=$SLURM_CONF" >"$DIR/env"
    log "cluster '$CLUSTER' up: export SLURM_CONF=$SLURM_CONF"
    ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 install|start|status|stop" >&2; exit 2 ;;
esac
