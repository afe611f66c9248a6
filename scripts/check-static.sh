#!/usr/bin/env bash
# Builds the static binaries (scripts/build-static.sh) and checks them: one executable per arch (iotlan-ipam
# and kubectl-iotlan are hard links of iotlan), statically linked, for the right machine, and it runs under
# each name: `iotlan --help`, `iotlan install --help`, `iotlan leases --help`, `kubectl-iotlan leases --help`
# (as `kubectl iotlan`), and the CNI VERSION verb of `iotlan` and `iotlan-ipam` with empty stdin. amd64 runs natively; arm64 runs under qemu-aarch64-static (qemu-user-static).
# Then, per arch, the node agent installs into a fake kubeadm host root, and `iotlan-ipam` ADD with the
# kubernetes store completes a TLS handshake (ring) with `openssl s_server` through the kubeconfig the agent
# wrote: the server's HTTP answer is no API object, so ADD fails with code 11 after TLS, never on TLS itself.
#   scripts/check-static.sh [--no-build]
# Prints one line per check and ends with "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--no-build" ] || bash scripts/build-static.sh
passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

for arch in amd64 arm64; do
    dir=dist/linux-$arch
    case $arch in
        amd64) machine="x86-64"; run=() ;;
        arm64) machine="ARM aarch64"; run=(qemu-aarch64-static) ;;
    esac
    if [ "$arch" = arm64 ] && ! command -v qemu-aarch64-static >/dev/null; then
        bad "$arch: qemu-aarch64-static missing (scripts/build-static.sh --setup-only installs qemu-user-static)"
        continue
    fi
    desc=$(file -b "$dir/iotlan" 2>&1 || true)
    if [[ $desc == *"$machine"* && ( $desc == *"statically linked"* || $desc == *"static-pie linked"* ) ]]; then
        ok "$arch iotlan: static $machine, $(stat -c %s "$dir/iotlan") bytes"
    else
        bad "$arch iotlan: $desc"
    fi
    for b in iotlan-ipam kubectl-iotlan; do
        if [ "$(stat -c %d:%i "$dir/$b" 2>&1)" = "$(stat -c %d:%i "$dir/iotlan")" ]; then
            ok "$arch $b: a hard link of iotlan (one executable)"
        else
            bad "$arch $b: not a hard link of $dir/iotlan"
        fi
    done
    for b in iotlan iotlan-ipam; do
        out=$(env -i PATH=/usr/bin:/bin CNI_COMMAND=VERSION "${run[@]}" "$dir/$b" </dev/null 2>&1) && rc=0 || rc=$?
        if [ "$rc" = 0 ] && python3 -c 'import json,sys; v=json.loads(sys.argv[1]); assert {"0.3.1","1.0.0","1.1.0"} <= set(v["supportedVersions"]), v' "$out" 2>/dev/null; then
            ok "$arch $b: CNI VERSION -> $out"
        else
            bad "$arch $b: CNI VERSION (exit $rc): $out"
        fi
    done
    for args in "iotlan --help" "iotlan install --help" "iotlan leases --help" "kubectl-iotlan leases --help"; do
        bin=${args%% *} want="Usage: iotlan"
        [ "$bin" = kubectl-iotlan ] && want="Usage: kubectl iotlan leases"
        # shellcheck disable=SC2086
        out=$(env -i PATH=/usr/bin:/bin "${run[@]}" "$dir/$bin" ${args#* } 2>&1) && rc=0 || rc=$?
        if [ "$rc" = 0 ] && grep -q "$want" <<<"$out"; then
            ok "$arch $args: $(grep -m1 "$want" <<<"$out")"
        else
            bad "$arch $args (exit $rc, wanted \"$want\"): $out"
        fi
    done
done
work=$(mktemp -d /tmp/iotlan-static.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
(
    cd "$work"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj /CN=iotlan-check-ca
    openssl req "${ec[@]}" -keyout srv.key -out srv.csr -subj /CN=127.0.0.1
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf
) >/dev/null 2>&1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
openssl s_server -quiet -www -accept "127.0.0.1:$port" -cert "$work/srv.pem" -key "$work/srv.key" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

for arch in amd64 arm64; do
    dir=dist/linux-$arch
    case $arch in amd64) run=() ;; arm64) run=(qemu-aarch64-static) ;; esac
    [ "$arch" = arm64 ] && ! command -v qemu-aarch64-static >/dev/null && continue
    root=$work/$arch/host sa=$work/$arch/sa
    mkdir -p "$root/opt/cni/bin" "$root/etc/cni/net.d" "$sa"
    echo token-1 >"$sa/token"; cp "$work/ca.pem" "$sa/ca.crt"; echo iotlan-system >"$sa/namespace"
    out=$("${run[@]}" "$dir/iotlan" install --once --host-root "$root" --source-dir "$dir" \
        --serviceaccount-dir "$sa" --health-file "$work/$arch/healthy" \
        --api-server "https://127.0.0.1:$port" 2>&1) && rc=0 || rc=$?
    kc=$root/etc/cni/net.d/iotlan.d/iotlan.kubeconfig
    bin=$root/opt/cni/bin
    if [ "$rc" = 0 ] && cmp -s "$dir/iotlan" "$bin/iotlan" &&
        [ "$(stat -c %d:%i "$bin/iotlan-ipam")" = "$(stat -c %d:%i "$bin/iotlan")" ] &&
        [ "$(stat -c %a "$kc")" = 600 ]; then
        ok "$arch iotlan install --once: iotlan, iotlan-ipam (a hard link of it) and kubeconfig (0600) on a kubeadm host root"
    else
        bad "$arch iotlan install --once (exit $rc): $out"
        continue
    fi
    conf='{"cniVersion":"1.1.0","name":"iot","type":"iotlan-ipam","ipam":{"type":"iotlan-ipam",
      "subnet":"192.168.20.0/24","pool":["192.168.20.210-192.168.20.239"],
      "store":{"kind":"kubernetes","namespace":"iotlan-system","kubeconfig":"'"$kc"'","timeoutMs":20000}}}'
    out=$(env -i PATH=/usr/bin:/bin CNI_COMMAND=ADD CNI_CONTAINERID=c1 CNI_NETNS=/x CNI_IFNAME=net1 \
        CNI_PATH=/opt/cni/bin CNI_ARGS="K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p" \
        "${run[@]}" "$bin/iotlan-ipam" <<<"$conf" 2>/dev/null) && rc=0 || rc=$?
    if python3 -c 'import json,sys; e=json.loads(sys.argv[1]); assert e["code"] == 11 and "deserializ" in e["msg"] + e.get("details", ""), e' "$out" 2>/dev/null; then
        ok "$arch iotlan-ipam ADD: TLS to the kubeconfig's server verified with its CA (ring), then code 11"
    else
        bad "$arch iotlan-ipam ADD over TLS (exit $rc): $out"
    fi
done

echo "static: $passed passed, $failed failed"
echo "$passed passed, $failed failed"
((failed == 0))
