# Command agent on ttyS1 (the host's vm-tests/harness.py is the other end).
# Request:  "<id> <base64 script>\n"
# Reply:    "@@R <id> <rc> o<base64 stdout> e<base64 stderr>\n"
# Scripts that leave a job running in the background must redirect its output themselves.
exec </dev/ttyS1 >/dev/ttyS1 2>/dev/console
stty raw -echo
echo "@@READY"
while read -r id script; do
    # busybox sh runs its own applets before searching PATH; its `ip` can't drive macvlan/ipvlan well.
    { echo 'ip() { /usr/sbin/ip "$@"; }'; echo "$script" | base64 -d; } >/tmp/vmt-cmd.sh
    (cd /tmp && sh /tmp/vmt-cmd.sh) </dev/null >/tmp/vmt-out 2>/tmp/vmt-err
    rc=$?
    echo "@@R $id $rc o$(base64 </tmp/vmt-out | tr -d '\n') e$(base64 </tmp/vmt-err | tr -d '\n')"
done
