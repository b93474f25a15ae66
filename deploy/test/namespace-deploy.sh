#!/usr/bin/env bash
# The deploy test: the unchanged playbooks, run over SSH against "hosts" that are network
# namespaces of this machine, each with its own address, its own sshd and its own writable
# /etc, /opt, /var, /root and /run (overlays on a tmpfs, private to the host's mount namespace,
# so nothing the playbook writes reaches the real machine). The controller is a namespace too,
# and the LAN is a bridge in a namespace of its own: no packet of the test leaves the machine,
# and nothing is ever sent from the machine's own namespace to a namespace's address.
#
# It deploys REGIONS (1 or 2, default 1) regions of three coordinators and one edge, runs the
# playbook a second time and requires it to change nothing, checks the systemd units with
# `systemd-analyze verify`, creates a campaign through one coordinator, bids through the edges,
# reads the spend through another coordinator. Then it adds a fourth coordinator to the first
# region the way README.md's "Deploy" tells an operator to (the host in the inventory, then
# `site.yml --limit` it), runs rolling.yml while the exchange bids, and checks through the new
# node that every bill is in the ledger, none lost, none over the budget. Last, an auditor pulls
# and verifies the live log (and may not write), and backup.yml archives every coordinator's data
# directory, whose financial log must verify offline.
#
# Needs root, iproute2, openssh-server, systemd (for systemd-analyze), and ansible-core on the
# controller's python; `./dev deploy-test` installs them. BIN_DIR: the binaries (target/debug).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN_DIR:-$repo/target/debug}
regions=${REGIONS:-1}
case "$regions" in 1|2) ;; *) echo "namespace-deploy: REGIONS must be 1 or 2" >&2; exit 2 ;; esac
for b in coordinator edge budgetctl sim-exchange; do
  [ -x "$bin/$b" ] || { echo "namespace-deploy: $bin/$b is missing: build it first" >&2; exit 2; }
done
for t in ip unshare sshd ssh-keygen ansible-playbook systemd-analyze setpriv; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "namespace-deploy: $t is missing" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "namespace-deploy: must run as root (namespaces, sshd)" >&2; exit 2; }

work=$(mktemp -d -t budget-deploy.XXXXXX)
chmod 755 "$work"
# What the playbook copies to every host: the binaries without their debug sections (a debug
# build is about 470 MB a host otherwise).
mkdir -p "$work/bin"
for b in coordinator edge budgetctl; do strip --strip-debug -o "$work/bin/$b" "$bin/$b"; done
prefix=bdt$$
lan=$prefix-lan
ctl=$prefix-ctl
started_ns=()
hosts=()
log() { printf '[%5ss] %s\n' "$SECONDS" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
  local code=$?
  log "tearing down (logs and files kept in $work)"
  # Each host's service logs, from its own mount namespace (where sshd runs).
  for h in "${hosts[@]}"; do
    read -r name _ _ _ _ <<<"$h"
    local pid
    pid=$(cat "$work/hosts/$name/sshd.pid" 2>/dev/null) || continue
    mkdir -p "$work/hosts/$name/logs"
    nsenter -t "$pid" -m sh -c 'cat /var/log/budget/coordinator.log 2>/dev/null' >"$work/hosts/$name/logs/coordinator.log" || true
    nsenter -t "$pid" -m sh -c 'cat /var/log/budget/edge.log 2>/dev/null' >"$work/hosts/$name/logs/edge.log" || true
    # The data directory (for `budgetctl audit verify` and a look at the entries) and the
    # processes that ran there.
    nsenter -t "$pid" -m tar -C /var/lib/budget -cf - . >"$work/hosts/$name/data.tar" 2>/dev/null || true
    ip netns pids "$prefix-$name" 2>/dev/null | xargs -r ps -o pid,ppid,lstart,args -p >"$work/hosts/$name/processes.txt" 2>&1 || true
  done
  # Only processes inside the namespaces this run made: sshd, the services, their supervisors.
  for ns in "${started_ns[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    local left=0
    for ns in "${started_ns[@]}"; do
      [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && left=1
    done
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  for ns in "${started_ns[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  # The stripped copies of the binaries (90 MB): the logs, data and playbook output stay.
  rm -rf "$work/bin"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# The LAN: a bridge in its own namespace; each host's eth0 is one end of a veth pair whose other
# end is on the bridge.
ip netns add "$lan"; started_ns+=("$lan")
in_ns "$lan" ip link add br0 type bridge
in_ns "$lan" ip link set br0 up
in_ns "$lan" ip link set lo up
n=0
attach() { # NS IP
  n=$((n + 1))
  ip netns add "$1"; started_ns+=("$1")
  ip link add "v$prefix$n" netns "$lan" type veth peer name eth0 netns "$1"
  in_ns "$lan" ip link set "v$prefix$n" master br0 up
  in_ns "$1" ip addr add "$2/24" dev eth0
  in_ns "$1" ip link set eth0 up
  in_ns "$1" ip link set lo up
}
attach "$ctl" 10.77.0.2

# The hosts: name, address, group, region, node id. The last is the coordinator added later:
# its namespace and sshd start now, it joins the inventory when it is added.
names=(eu-1 us-1)
for r in $(seq 0 $((regions - 1))); do
  for i in 1 2 3; do hosts+=("${names[$r]//-/}-coord-$i 10.77.0.$((10 + 20 * r + i)) coordinators ${names[$r]} $i"); done
  hosts+=("${names[$r]//-/}-edge-1 10.77.0.$((20 + 20 * r + 1)) edges ${names[$r]} 0")
done
added=eu1-coord-4
hosts+=("$added 10.77.0.14 coordinators eu-1 4")

# One SSH key for the controller, one host key for every sshd (the test's known_hosts pins it).
mkdir -p "$work/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/controller" -C deploy-test
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host" -C deploy-test-host
cp "$work/ssh/controller.pub" "$work/ssh/authorized_keys"
: >"$work/known_hosts"

for h in "${hosts[@]}"; do
  read -r name ip _ _ _ <<<"$h"
  ns=$prefix-$name
  attach "$ns" "$ip"
  mkdir -p "$work/hosts/$name"
  cat >"$work/hosts/$name/sshd_config" <<EOF
ListenAddress $ip
HostKey $work/ssh/host
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $work/ssh/authorized_keys
StrictModes no
UsePAM no
PidFile /run/sshd-deploy-test.pid
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  # The host's own writable /etc, /opt, /var, /root and /run: overlays whose upper layers are on
  # a tmpfs of this mount namespace only.
  mkdir -p "$work/hosts/$name/mnt"
  cat >"$work/hosts/$name/init.sh" <<EOF
set -eu
t="$work/hosts/$name/mnt"
mount -t tmpfs -o size=2g tmpfs "\$t"
for d in etc opt var root run; do
  mkdir -p "\$t/\$d-up" "\$t/\$d-work"
  mount -t overlay overlay -o "lowerdir=/\$d,upperdir=\$t/\$d-up,workdir=\$t/\$d-work" "/\$d"
done
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -f "$work/hosts/$name/sshd_config"
EOF
  # ip netns exec, unshare and bash all exec: $! becomes the host's sshd.
  ip netns exec "$ns" unshare --mount --propagation private bash "$work/hosts/$name/init.sh" \
    >"$work/hosts/$name/sshd.log" 2>&1 &
  echo $! >"$work/hosts/$name/sshd.pid"
  echo "$ip $(cut -d' ' -f1,2 "$work/ssh/host.pub")" >>"$work/known_hosts"
done

# The inventory: the example's shape, this test's addresses and settings. WITH_ADDED=1 lists
# the added coordinator too.
inventory() {
  echo "all:"
  echo "  vars:"
  echo "    ansible_user: root"
  echo "    ansible_ssh_private_key_file: $work/ssh/controller"
  echo "    ansible_ssh_common_args: -o UserKnownHostsFile=$work/known_hosts -o StrictHostKeyChecking=yes"
  echo "    ansible_remote_tmp: /root/.ansible/tmp"
  echo "    ansible_python_interpreter: /usr/bin/python3"
  echo "    common_service_manager: supervisor"
  echo "    common_binaries_src: $work/bin"
  echo "    certs_dir: $work/pki"
  echo "    coordinator_backup_dest: $work/backups"
  echo "    coordinator_segment_entries: 200"
  echo "    coordinator_lease_duration_ms: 5000"
  echo "    coordinator_settlement_window_ms: 2000"
  echo "    coordinator_margin_ms: 500"
  echo "    coordinator_late_acceptance_ms: 10000"
  echo "    coordinator_push_interval_ms: 500"
  echo "    coordinator_horizon_ms: 5000"
  echo "    coordinator_health_wait_secs: 60"
  echo "    edge_notice_keys:"
  for r in $(seq 0 $((regions - 1))); do
    echo "      ${names[$r]}: $(printf 'deploy-test-notice-key-%s' "${names[$r]}" | od -An -tx1 | tr -d ' \n')"
  done
  echo "  children:"
  for g in coordinators edges; do
    echo "    budget_$g:"
    echo "      hosts:"
    for h in "${hosts[@]}"; do
      read -r name ip group region id <<<"$h"
      [ "$group" = "$g" ] || continue
      [ "$name" != "$added" ] || [ "${WITH_ADDED:-0}" = 1 ] || continue
      if [ "$g" = coordinators ]; then
        echo "        $name: {ansible_host: $ip, budget_region: $region, budget_node_id: $id}"
      else
        echo "        $name: {ansible_host: $ip, budget_region: $region}"
      fi
    done
  done
  # The Prometheus host: the first coordinator's host stands in for it.
  echo "    budget_monitoring:"
  echo "      hosts:"
  echo "        eu1-coord-1:"
}
inventory >"$work/inventory.yml"

export ANSIBLE_CONFIG=$repo/deploy/ansible.cfg
export ANSIBLE_LOCAL_TEMP=$work/ansible-local ANSIBLE_SSH_CONTROL_PATH_DIR=$work/ansible-cp
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
playbook() { # NAME FILE [ARGS…]: runs it in the controller's namespace; the recap to NAME.log
  local name=$1 file=$2; shift 2
  log "ansible-playbook $file $*"
  if ! in_ns "$ctl" ansible-playbook -i "$work/inventory.yml" "$repo/deploy/$file" "$@" \
    >"$work/$name.log" 2>&1; then
    tail -40 "$work/$name.log" >&2
    fail "$file (log: $work/$name.log)"
  fi
}

# Wait for every sshd (bounded).
for h in "${hosts[@]}"; do
  read -r name ip _ _ _ <<<"$h"
  for i in $(seq 1 50); do
    in_ns "$ctl" bash -c "exec 3<>/dev/tcp/$ip/22" 2>/dev/null && break
    [ "$i" = 50 ] && fail "$name's sshd did not come up ($work/hosts/$name/sshd.log)"
    sleep 0.2
  done
done
log "${#hosts[@]} hosts up, each with its own sshd"

playbook deploy-1 site.yml
playbook deploy-2 site.yml
recap=$(grep -E '^[a-z0-9-]+ +: ok=' "$work/deploy-2.log" || true)
[ -n "$recap" ] || fail "no recap in the second run"
if grep -Ev 'changed=0 .*failed=0' <<<"$recap" | grep -q .; then
  echo "$recap" >&2
  fail "the second run of site.yml changed something (idempotency)"
fi
log "second run: changed=0 on every host"

# The Prometheus host's scrape targets: every coordinator and edge of the inventory, with its
# region, and nothing else; promtool accepted the configuration during the playbook (when the
# machine has it, as ./dev test's does).
targets_ok() { # WHICH: the inventory's hosts (WITH_ADDED=1: the added one too) are the targets
  local mon want got
  mon=$(cat "$work/hosts/eu1-coord-1/sshd.pid")
  for role in coordinator edge; do
    want=$(for h in "${hosts[@]}"; do
      read -r name ip group region _ <<<"$h"
      [ "$group" = "${role}s" ] || continue
      [ "$name" != "$added" ] || [ "${WITH_ADDED:-0}" = 1 ] || continue
      port=9101; [ "$role" = edge ] && port=8080
      echo "$ip:$port $region $role $name"
    done | sort)
    got=$(nsenter -t "$mon" -m cat "/etc/prometheus/budget/targets/${role}s.json" |
      python3 -c 'import json,sys
for t in json.load(sys.stdin):
    l = t["labels"]
    for a in t["targets"]: print(a, l["region"], l["role"], l["host"])' | sort)
    [ "$got" = "$want" ] || fail "the scrape targets of the ${role}s are
$got
not
$want"
  done
  for f in budget-alerts.yml budget-scrape.yml prometheus-budget.yml; do
    nsenter -t "$mon" -m test -s "/etc/prometheus/budget/$f" || fail "/etc/prometheus/budget/$f is missing"
  done
  grep -A2 'TASK \[monitoring : Check the configuration and the rules with promtool\]' "$work/deploy-1.log" |
    grep -q '^ok: \[eu1-coord-1\]' || fail "promtool did not check the Prometheus configuration ($work/deploy-1.log)"
}
targets_ok
log "the Prometheus host scrapes every coordinator and edge ($(grep -c 'budget_node_id' "$work/inventory.yml") coordinators)"

log "systemd-analyze verify on every host's units"
if ! in_ns "$ctl" ansible -i "$work/inventory.yml" all -m ansible.builtin.shell \
  -a 'systemd-analyze verify /etc/systemd/system/budget-*.service' >"$work/verify.log" 2>&1; then
  cat "$work/verify.log" >&2
  fail "systemd-analyze verify"
fi

pki=$work/pki
ctl_budgetctl() { in_ns "$ctl" "$bin/budgetctl" --ca "$pki/ca.pem" --cert "$pki/ansible-operator.pem" \
  --key "$pki/ansible-operator.key" "$@"; }
c1=10.77.0.11:7001
c2=10.77.0.12:7001
ctl_budgetctl --endpoint "$c1" campaign create spring --bid-cpm 2.50 >/dev/null
ctl_budgetctl --endpoint "$c1" campaign set-budget spring 2.00 >/dev/null
log "campaign spring (2.00) created through $c1"

edges=()
coords=()
for h in "${hosts[@]}"; do
  read -r name ip group region _ <<<"$h"
  [ "$group" = edges ] && edges+=(--edge "$region=http://$ip:8080")
  [ "$group" = coordinators ] && coords+=(--coordinator "$ip:7001")
done
exchange() { # NAME SECS SEED: bids through every edge; its output to NAME.log. The seed makes
  # runs repeatable; two runs may send the same auction ids (as real exchanges do), and every
  # bid of ours is charged on its own all the same.
  in_ns "$ctl" "$bin/sim-exchange" "${edges[@]}" "${coords[@]:0:2}" --ca "$pki/ca.pem" \
    --cert "$pki/ansible-operator.pem" --key "$pki/ansible-operator.key" \
    --rate 100 --duration-secs "$2" --seed "$3" >"$work/$1.log" 2>&1
}
billed() { # NAME: what the exchange billed for spring, micros (its last status line: the
  # verdict table follows it)
  grep '^t=' "$work/$1.log" | tail -1 | grep -o 'spring [0-9.]*' |
    awk '{split($2, p, "."); print p[1] * 1000000 + p[2]}'
}
settled() { # ENDPOINT: spring's lifetime spend settled in every region, micros, as ENDPOINT sees it
  ctl_budgetctl --endpoint "$1" regions --campaign spring --json |
    python3 -c 'import json,sys; v=json.load(sys.stdin); print(sum(r["settled_micros"] for b in v["buckets"] if b["bucket"]=="lifetime" for r in b["regions"]))'
}
billed_before=0
agree() { # NAME ENDPOINT: the ledger, read at ENDPOINT, comes to what the exchanges billed so far
  local want got this
  this=$(billed "$1")
  [ -n "$this" ] || fail "$1: the exchange billed nothing ($work/$1.log)"
  want=$((billed_before + this))
  billed_before=$want
  for _ in $(seq 1 40); do
    got=$(settled "$2")
    [ "$got" = "$want" ] && break
    sleep 0.5
  done
  [ "$got" = "$want" ] || fail "$1: the exchanges billed $want micros in all, the ledger at $2 says $got"
  [ "$got" -le 2000000 ] || fail "$1: $got micros settled over a 2.00 budget"
  log "$1: billed $want micros = settled in the ledger read at $2 (budget 2000000)"
}

exchange bids 15 1 || fail "the exchange lost notices ($work/bids.log)"
agree bids "$c2"

# Adding a node, as deploy/README.md says: the host joins the inventory, `site.yml --limit`
# installs it and adds it to its region; rolling.yml then gives every other node and edge the
# new member list, one at a time.
log "adding $added to eu-1"
WITH_ADDED=1 inventory >"$work/inventory.yml"
c4=10.77.0.14:7001
playbook add-node site.yml --limit "$added"
grep -A3 'TASK \[coordinator : Join a region' "$work/add-node.log" | grep -q "^changed: \[$added" ||
  fail "site.yml --limit $added did not add it to the region ($work/add-node.log)"
ctl_budgetctl --endpoint "$c4" cluster health >"$work/add-node-health.txt" 2>&1 ||
  fail "the added node is not healthy: $(cat "$work/add-node-health.txt")"
members=$(ctl_budgetctl --endpoint "$c1" status --json |
  python3 -c 'import json,sys; print(" ".join(str(n) for n in sorted(m["node"] for m in json.load(sys.stdin)["members"] if m["voter"])))')
[ "$members" = "1 2 3 4" ] || fail "eu-1 lists voters '$members' after the add, not '1 2 3 4'"
got=$(settled "$c4")
[ "$got" = "$billed_before" ] || fail "the added node reads $got micros settled, the exchange billed $billed_before"
log "$added is a caught-up voter of eu-1 (voters $members) and reads the same ledger: $got micros"
# The Prometheus host learns of the new node when its play runs again.
playbook monitoring site.yml --limit budget_monitoring
WITH_ADDED=1 targets_ok
log "the Prometheus host's targets list $added too"

log "rolling restart of every coordinator and edge while the exchange bids"
# The same seed as the first run: its auction ids come again, on new bids of ours, and each
# must be charged (the ledger once dropped them as duplicates of the first run's).
exchange rolling 120 1 &
load=$!
playbook playbook-rolling rolling.yml
wait "$load" || fail "the exchange lost notices during the rolling restart ($work/rolling.log)"
agree rolling "$c4"
coordinators=$(WITH_ADDED=1 inventory | grep -c 'budget_node_id')
restarts=$(grep -c 'RUNNING HANDLER \[coordinator : Restart the coordinator under the supervisor\]' "$work/playbook-rolling.log" || true)
[ "$restarts" = "$coordinators" ] || fail "rolling.yml restarted $restarts of $coordinators coordinators"
log "rolling.yml restarted $restarts coordinators one at a time; nothing lost"

# An auditor: pulls and verifies the live log; may not write.
"$bin/budgetctl" certs issue --ca-dir "$pki" --role auditor --name deploy-test-auditor >/dev/null
auditor() { in_ns "$ctl" "$bin/budgetctl" --ca "$pki/ca.pem" --cert "$pki/deploy-test-auditor.pem" \
  --key "$pki/deploy-test-auditor.key" "$@"; }
auditor --endpoint "$c2" audit verify-live >"$work/audit-live.txt" 2>&1 ||
  fail "the auditor's verification of the live log at $c2: $(cat "$work/audit-live.txt")"
if auditor --endpoint "$c1" campaign set-budget spring 9.00 >"$work/audit-write.txt" 2>&1; then
  fail "an auditor's certificate changed a budget"
fi
grep -qi "auditor" "$work/audit-write.txt" || fail "the auditor's refusal does not name the role: $(cat "$work/audit-write.txt")"
log "an auditor verified the live log at $c2; its budget change was refused"

# Backups: one archive per coordinator on the controller; the nodes healthy again; an unpacked
# archive's financial log verifies offline.
playbook backup backup.yml
for h in "${hosts[@]}"; do
  read -r name _ group _ _ <<<"$h"
  [ "$group" = coordinators ] || continue
  n=$(find "$work/backups/$name" -name '*.tar.gz' 2>/dev/null | wc -l)
  [ "$n" = 1 ] || fail "backup.yml left $n archives of $name in $work/backups/$name"
done
mkdir -p "$work/unpacked"
tar -C "$work/unpacked" -xzf "$(find "$work/backups/eu1-coord-2" -name '*.tar.gz')"
"$bin/budgetctl" audit verify "$work/unpacked" >"$work/audit-backup.txt" 2>&1 ||
  fail "eu1-coord-2's backup does not verify: $(cat "$work/audit-backup.txt")"
for c in "$c1" "$c2" "$c4"; do
  ctl_budgetctl --endpoint "$c" cluster health >/dev/null 2>&1 || fail "$c is not healthy after backup.yml"
done
got=$(settled "$c1")
[ "$got" = "$billed_before" ] || fail "after backup.yml the ledger at $c1 says $got, the exchanges billed $billed_before"
log "backup.yml archived $coordinators coordinators; eu1-coord-2's archive verifies offline ($(grep -m1 '^  entries' "$work/audit-backup.txt" | tr -s ' ' | sed 's/^ //'))"
log "PASSED"
