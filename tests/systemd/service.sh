#!/bin/bash
# keyturn as a systemd service, in a booted Debian 12 (systemd is PID 1): installed from its
# package, agents tagged by unit and by slice, holds decided through the command line and
# the local API, held processes kept across daemon restarts, crashes and a package upgrade.
# Run by `cargo xtask vm systemd` (xtask/src/vm/systemd.rs), which reads the
# `KEYTURN-VM systemd` lines: every check says ok or FAILED, and the exit code is the
# number of failures.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_PAGER= SYSTEMD_COLORS=0

failures=0
say() { echo "KEYTURN-VM systemd $*"; }
ok() { say "ok: $*"; }
failed() { say "FAILED: $*"; failures=$((failures + 1)); }
# check WHAT COMMAND...: COMMAND must succeed.
check() { local what=$1; shift; if "$@"; then ok "$what"; else failed "$what"; return 1; fi; }
# eventually WHAT SECONDS COMMAND...: COMMAND must succeed within SECONDS.
eventually() {
    local what=$1 seconds=$2; shift 2
    local until=$((SECONDS + seconds))
    until "$@" >/dev/null; do
        if [ "$SECONDS" -ge "$until" ]; then failed "$what (not within ${seconds}s)"; return 1; fi
        sleep 0.5
    done
    ok "$what"
}

# The one pending hold of agent $1 and kind $2 (exec or egress), as JSON; fails unless
# there is exactly one.
pending_hold() {
    local holds
    holds=$(keyturn pending --json 2>/dev/null | jq -c --arg agent "$1" --arg kind "$2" \
        '[.[] | select(.agent == $agent and .kind == $kind)]') || return 1
    [ "$(jq length <<<"$holds")" = 1 ] && jq -c '.[0]' <<<"$holds"
}
hold_id() { pending_hold "$1" "$2" | jq -r .id; }
# local_api REQUEST: the daemon's local API, one JSON request and one reply.
local_api() { socat -t 30 - UNIX-CONNECT:/run/keyturn/keyturn.sock <<<"$1"; }
unit_pid() { systemctl show -P MainPID "$1"; }
stopped() { [ "$(ps -o stat= -p "$1" | cut -c1)" = T ]; }

say "start: $(uname -r), $(systemctl --version | head -n 1)"

# ---- A web server only the agents want to reach, on an address that is not loopback ----
ip addr add 10.9.0.1/32 dev lo
mkdir -p /srv/www && echo hello >/srv/www/hello
busybox httpd -p 10.9.0.1:8080 -h /srv/www

# ---- Install: the daemon is ready when systemd says active (Type=notify) ----
check "dpkg -i installs the package" dpkg -i /payload/keyturn.deb
if ! check "keyturn.service is active" systemctl is-active --quiet keyturn.service; then
    journalctl -u keyturn.service --no-pager -n 30 | sed 's/^/KEYTURN-VM systemd journal: /'
fi
check "its type is notify" test "$(systemctl show -P Type keyturn.service)" = notify
mode=$(keyturn status | jq -r .mode)
check "the daemon runs in mode lsm-cgroup (it says $mode)" test "$mode" = lsm-cgroup
exposure=$(systemd-analyze security keyturn.service 2>/dev/null | sed -n 's/.*Overall exposure level for keyturn.service: \([0-9.]*\).*/\1/p')
say "exposure=$exposure"
systemd-analyze security keyturn.service 2>/dev/null | grep -E '^✗' | sed 's/^/KEYTURN-VM systemd open: /'
check "systemd-analyze security rates it ($exposure) below 4.0" awk -v e="$exposure" 'BEGIN { exit !(e != "" && e + 0 < 4.0) }'
check "the agents' slice is active" systemctl is-active --quiet keyturn-agents.slice
check "the agents' slice is tagged at install" sh -c 'keyturn tags | grep -q "unit=keyturn-agents.slice"'
check "the approver group exists" getent group keyturn

# ---- An agent as a service under its own user, tagged by unit ----
useradd --system --create-home --home-dir /home/agent agent
cat >/etc/systemd/system/claude.service <<'EOF'
[Unit]
Description=an AI agent that fetches a page

[Service]
User=agent
ExecStart=/usr/bin/curl -sS --max-time 600 -o /home/agent/page http://10.9.0.1:8080/hello
EOF
systemctl daemon-reload
check "keyturn tag --unit claude.service" sh -c 'keyturn tag --unit claude.service --name claude --requester ops@example.com >/dev/null'
check "the tag wrote the service's drop-in" grep -q -- "--starting" /etc/systemd/system/claude.service.d/50-keyturn.conf
check "systemd reads the drop-in" sh -c 'systemctl show -P DropInPaths claude.service | grep -q 50-keyturn.conf'
check "the stopped service's cgroup is made before it starts" test -d /sys/fs/cgroup/system.slice/claude.service

systemctl start --no-block claude.service
eventually "curl's exec is held and listed as claude's" 120 pending_hold claude exec
hold=$(pending_hold claude exec)
check "the exec hold names the program" test "$(jq -r .path <<<"$hold")" = /usr/bin/curl
check "the exec hold names the user" test "$(jq -r .user <<<"$hold")" = agent
check "the held process is stopped" stopped "$(jq -r .pid <<<"$hold")"
check "approved on the command line for 10 minutes" sh -c "keyturn approve $(jq -r .id <<<"$hold") --for 10m >/dev/null"
eventually "curl's connect is held" 60 pending_hold claude egress
hold=$(pending_hold claude egress)
check "the egress hold names the destination" test "$(jq -r '.address + ":" + (.port | tostring)' <<<"$hold")" = 10.9.0.1:8080
reply=$(local_api "{\"op\":\"approve\",\"id\":\"$(jq -r .id <<<"$hold")\",\"scope\":\"once\",\"reason\":\"the agent's own docs\"}")
check "approved through the local API ($reply)" jq -e 'has("Ok")' <<<"$reply"
eventually "the approved action completes as if nothing happened" 60 grep -qx hello /home/agent/page

# ---- The unit restarts in a new cgroup: the tag follows it, with its approval for 10 min ----
rm -f /home/agent/page
systemctl start --no-block claude.service
eventually "after a restart of the unit, its connect is held" 120 pending_hold claude egress
check "the audit trail says the tag followed the unit" sh -c "keyturn audit --json | grep -q tag_followed"
check "the approval for 10 minutes followed the unit: its exec was not held" \
    test -z "$(keyturn pending --json | jq -c '.[] | select(.agent == "claude" and .kind == "exec")')"
pid=$(pending_hold claude egress | jq -r .pid)
check "denied on the command line" sh -c "keyturn deny $(hold_id claude egress) --reason 'not today' >/dev/null"
eventually "the denied process is killed" 30 sh -c "! kill -0 $pid 2>/dev/null"
check "the denied action never completed" test ! -e /home/agent/page

# ---- A service's own start commands run before keyturn's drop-in: they are held too ----
cat >/etc/systemd/system/early.service <<'EOF'
[Unit]
Description=an agent whose own pre-start command is flagged

[Service]
User=agent
TimeoutStartSec=600
ExecStartPre=/usr/bin/curl -sS -o /tmp/early-page http://10.9.0.1:8080/hello
ExecStart=/bin/true
EOF
systemctl daemon-reload
check "keyturn tag --unit early.service" sh -c 'keyturn tag --unit early.service --requester ops@example.com >/dev/null'
systemctl start --no-block early.service
eventually "the unit's own ExecStartPre, before keyturn's, is held" 120 pending_hold early exec
check "denied" sh -c "keyturn deny $(hold_id early exec) >/dev/null"
eventually "the unit fails to start" 60 sh -c 'systemctl is-failed --quiet early.service'
check "its pre-start command never ran" test ! -e /tmp/early-page

# ---- The slice tagged at install: systemd-run starts an agent under keyturn ----
systemd-run --quiet --slice=keyturn-agents.slice --uid=agent --unit=helper-agent \
    /usr/bin/curl -sS --max-time 600 -o /tmp/helper-page http://10.9.0.1:8080/hello
eventually "a unit started in keyturn-agents.slice is held" 120 pending_hold agents exec
check "approved for 10 minutes" sh -c "keyturn approve $(hold_id agents exec) --for 10m >/dev/null"
eventually "its connect is held" 60 pending_hold agents egress
check "approved" sh -c "keyturn approve $(hold_id agents egress) >/dev/null"
eventually "the slice's agent completes" 60 grep -qx hello /tmp/helper-page

# ---- Daemon restarts and crashes with a hold pending ----
systemctl start --no-block claude.service
eventually "a hold is pending" 120 pending_hold claude egress
id=$(hold_id claude egress)
pid=$(pending_hold claude egress | jq -r .pid)
check "systemctl restart keyturn" systemctl restart keyturn.service
check "after a restart, the process is still held" stopped "$pid"
eventually "after a restart, the new daemon lists the same hold" 60 test "$(hold_id claude egress)" = "$id"
check "systemctl kill -s KILL keyturn" systemctl kill -s KILL keyturn.service
check "after a crash, the process is still held" stopped "$pid"
eventually "systemd starts keyturn again" 60 systemctl is-active --quiet keyturn.service
eventually "after a crash, the new daemon lists the same hold" 60 test "$(hold_id claude egress)" = "$id"
check "a decision works after the crash" sh -c "keyturn approve $id >/dev/null"
eventually "the action approved after the crash completes" 60 grep -qx hello /home/agent/page
rm -f /home/agent/page
systemctl start --no-block claude.service
eventually "its next connect is held" 120 pending_hold claude egress
egress_id=$(hold_id claude egress)
egress_pid=$(pending_hold claude egress | jq -r .pid)

# ---- The logs are in the journal, with the hold's id and agent as fields ----
check "the journal holds no sign-in link, which others may read" \
    sh -c '! journalctl -u keyturn.service --no-pager | grep -q "#login="'
check "the journal has the hold's id and agent as fields" sh -c \
    "journalctl -u keyturn.service -o json | jq -e --arg id '$egress_id' 'select(.KEYTURN_ID == \$id and .KEYTURN_AGENT == \"claude\")' >/dev/null"

# ---- dpkg -r, then dpkg -i of a newer build, with a hold pending ----
check "dpkg -r keyturn" dpkg -r keyturn
check "removal kept the held process held" stopped "$egress_pid"
check "removal wrote that holds were pending" test -e /var/lib/keyturn/removed-with-holds
check "dpkg -i of a newer build" dpkg -i /payload/keyturn-newer.deb
check "the newer package is installed" sh -c 'dpkg-query -W -f="\${Version}" keyturn | grep -q vmtest1'
eventually "the upgraded daemon lists the pending hold" 60 test "$(hold_id claude egress)" = "$egress_id"
check "tags survived the upgrade" sh -c 'keyturn tags | grep -q "unit=claude.service" && keyturn tags | grep -q "unit=keyturn-agents.slice"'
# Approved in the embedded console's HTTP API, signed in with a one-time link.
link=$(keyturn console login 2>/dev/null)
origin=${link%%/#login=*} secret=${link##*#login=}
check "keyturn console login prints a one-time link ($origin)" test "$origin" = http://127.0.0.1:8470
check "the link signs in once" curl -sSf -o /dev/null -c /tmp/session -H 'X-Requested-With: keyturn' \
    -H 'Content-Type: application/json' -d "{\"secret\":\"$secret\"}" "$origin/auth/link"
check "the link does not sign in twice" test "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Requested-With: keyturn' \
    -H 'Content-Type: application/json' -d "{\"secret\":\"$secret\"}" "$origin/auth/link")" -ge 400
console_hold() { curl -sSf -b /tmp/session "$origin/api/holds?status=pending&agent=claude" | jq -er '.holds[0].id'; }
eventually "the console lists the pending hold" 60 console_hold
check "approved in the console's API after the upgrade" curl -sSf -o /dev/null -b /tmp/session \
    -H 'X-Requested-With: keyturn' -H 'Content-Type: application/json' -d '{"scope":"once"}' \
    "$origin/api/holds/$(console_hold)/approve"
eventually "the held action completes after the upgrade" 60 grep -qx hello /home/agent/page
# The approval of curl for 10 minutes in the slice (a grant) outlived the upgrade: curl
# runs unheld there, and only its connect (approved once before) is held.
systemd-run --quiet --slice=keyturn-agents.slice --uid=agent --unit=granted-agent \
    /usr/bin/curl -sS --max-time 600 -o /tmp/granted-page http://10.9.0.1:8080/hello
eventually "after the upgrade, the granted curl runs and its connect is held" 120 pending_hold agents egress
check "after the upgrade, the grant spared curl's exec a hold" \
    test -z "$(keyturn pending --json | jq -c '.[] | select(.agent == "agents" and .kind == "exec")')"
check "denied through the local API" jq -e 'has("Ok")' \
    <<<"$(local_api "{\"op\":\"deny\",\"id\":\"$(hold_id agents egress)\",\"reason\":null}")"
check "the audit chain verifies" keyturn audit verify

# ---- Without a daemon for longer than the liveness timeout, flagged actions fail ----
sed -i 's/^# liveness_timeout = .*/liveness_timeout = "3s"/' /etc/keyturn/keyturn.toml
check "the liveness timeout is set to 3 s" grep -qx 'liveness_timeout = "3s"' /etc/keyturn/keyturn.toml
systemctl restart keyturn.service
# bash is judged (and allowed) by this daemon: only its connect is flagged below.
check "bash runs in the slice" systemd-run --quiet --wait --slice=keyturn-agents.slice --uid=agent /bin/bash -c true
check "systemctl stop keyturn" systemctl stop keyturn.service
sleep 5
systemd-run --quiet --wait --slice=keyturn-agents.slice --uid=agent --unit=late-agent \
    /bin/bash -c 'exec 3<>/dev/tcp/10.9.0.1/8080 && echo connected >/tmp/late || echo "refused: $?" >/tmp/late'
check "with no daemon, a flagged connect fails at once and never connects" grep -q '^refused' /tmp/late
systemd-run --quiet --wait --slice=keyturn-agents.slice --uid=agent --unit=late-exec /usr/bin/curl -sS -o /tmp/late-page http://10.9.0.1:8080/hello
check "with no daemon, a flagged exec fails and never runs" test ! -e /tmp/late-page
check "systemctl start keyturn" systemctl start keyturn.service
check "the audit chain still verifies" keyturn audit verify

journalctl -u keyturn.service --no-pager -n 40 | sed 's/^/KEYTURN-VM systemd journal: /'
say "checks done, $failures failed"
exit "$failures"
