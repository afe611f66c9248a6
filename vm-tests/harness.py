"""Machinery for vm-tests/run: the initramfs, the vde switch, qemu VMs (TCG) and the in-guest command agent.

Each VM runs guest/init as PID 1. ttyS0 is the console (kernel and init messages, written to a file);
ttyS1 carries commands to guest/agent.sh and their results back (qemu's stdio).
"""

import base64
import collections
import os
import re
import shutil
import subprocess
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST = os.path.join(HERE, "guest")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Fail(Exception):
    """A scenario assertion failed, or a VM misbehaved."""


class Result:
    def __init__(self, rc, out, err, seconds):
        self.rc, self.out, self.err, self.seconds = rc, out, err, seconds


# ---------------------------------------------------------------- initramfs


def _ldd(path):
    """The shared libraries (including the loader) that `path` needs; empty for static binaries."""
    proc = subprocess.run(["ldd", path], capture_output=True, text=True)
    libs = []
    for line in proc.stdout.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def _copy(src, stage, dest):
    target = os.path.join(stage, dest.lstrip("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def _module_closure(modules_dir, names):
    """Paths (relative to modules_dir) of the named modules and everything they depend on."""
    deps = {}
    for line in open(os.path.join(modules_dir, "modules.dep")):
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {os.path.basename(p)[: -len(".ko")].replace("-", "_"): p for p in deps}
    todo = [by_name[n.replace("-", "_")] for n in names]
    seen = set()
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(deps[p])
    return sorted(seen)


def build_initramfs(stage, out, kernel_dir, binaries, with_macvlan=True):
    """Writes a newc cpio to `out`: busybox, the modules in guest/modules, and `binaries` {guest path: host path}
    with their shared libraries."""
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc/vmt", "var/lib/cni"):
        os.makedirs(os.path.join(stage, d), exist_ok=True)
    _copy("/bin/busybox", stage, "/bin/busybox")
    os.symlink("/bin/busybox", os.path.join(stage, "sbin/modprobe"))  # the kernel's module autoloader
    _copy(os.path.join(GUEST, "init"), stage, "/init")
    _copy(os.path.join(GUEST, "agent.sh"), stage, "/etc/vmt/agent.sh")
    _copy(os.path.join(GUEST, "modules"), stage, "/etc/vmt/modules")
    for dest, src in binaries.items():
        _copy(src, stage, dest)
        for lib in _ldd(src):
            _copy(lib, stage, lib)

    version = os.listdir(os.path.join(kernel_dir, "lib/modules"))[0]
    modules_dir = os.path.join(kernel_dir, "lib/modules", version)
    names = [n for n in open(os.path.join(GUEST, "modules")).read().split() if with_macvlan or n != "macvlan"]
    for rel in _module_closure(modules_dir, names):
        _copy(os.path.join(modules_dir, rel), stage, f"/lib/modules/{version}/{rel}")
    subprocess.run(["busybox", "depmod", "-b", stage, version], check=True)

    files = subprocess.run(["find", "."], cwd=stage, capture_output=True, text=True, check=True).stdout
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=stage, input=files.encode(),
                       stdout=f, check=True)


# ---------------------------------------------------------------- switch and VMs


class Switch:
    """A vde_switch: one L2 segment shared by the VMs, with no host interface attached."""

    def __init__(self, workdir, name="lan"):
        self.sock = os.path.join(workdir, f"{name}.vde")
        # vde_switch refuses to move a learned MAC to another port for 3 s ("min persistence"). A home
        # switch relearns at once, and a pod that moves between nodes must be reachable as soon as its
        # gratuitous ARP has passed, so model that switch.
        rc = os.path.join(workdir, f"{name}.vde.rc")
        with open(rc, "w") as f:
            f.write("hash/setminper 0\n")
        # vde_switch exits on EOF on stdin, so keep a pipe open for its lifetime.
        self.proc = subprocess.Popen(["vde_switch", "-f", rc, "-s", self.sock], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(self.sock, "ctl")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Fail("vde_switch did not start")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class VM:
    def __init__(self, name, workdir, kernel, initrd, nics, memory=256):
        """nics: [(switch, mac)], which the guest sees as eth0, eth1, ..."""
        self.name, self.nics = name, nics
        self.console = os.path.join(workdir, f"{name}.console")
        self.transcript = collections.deque(maxlen=12)
        self.results = {}
        self.cond = threading.Condition()
        self.ready = False
        self.broken = None
        self.next_id = 0
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(memory), "-smp", "1",
               "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
               "-kernel", kernel, "-initrd", initrd,
               "-append", f"console=ttyS0 panic=-1 quiet vmt.name={name}",
               "-chardev", f"file,id=con,path={self.console}", "-serial", "chardev:con",
               "-chardev", "stdio,id=cmd,signal=off", "-serial", "chardev:cmd"]
        for i, (switch, mac) in enumerate(nics):
            cmd += ["-netdev", f"vde,id=n{i},sock={switch.sock}",
                    "-device", f"virtio-net-pci,netdev=n{i},mac={mac},romfile="]
        self.qemu_log = open(os.path.join(workdir, f"{name}.qemu.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.qemu_log)
        threading.Thread(target=self._reader, daemon=True).start()

    def mac(self, nic_index):
        return self.nics[nic_index][1]

    def _reader(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            with self.cond:
                if line == "@@READY":
                    self.ready = True
                elif line.startswith("@@R "):
                    _, cid, rc, out, err = line.split(" ", 4)
                    self.results[int(cid)] = (int(rc), base64.b64decode(out[1:]).decode(errors="replace"),
                                              base64.b64decode(err[1:]).decode(errors="replace"))
                self.cond.notify_all()
        with self.cond:
            self.broken = self.broken or f"qemu exited (rc {self.proc.wait()})"
            self.cond.notify_all()

    def wait_ready(self, timeout):
        with self.cond:
            if not self.cond.wait_for(lambda: self.ready or self.broken, timeout):
                self.broken = f"no agent after {timeout}s"
            if self.broken:
                raise Fail(f"{self.name}: {self.broken}")

    def sh(self, script, timeout=60, check=True):
        """Runs a shell script in the guest; returns Result. check=True raises Fail on a non-zero exit."""
        if self.broken:
            raise Fail(f"{self.name} is unusable: {self.broken}")
        script = textwrap.dedent(script).strip() + "\n"
        with self.cond:
            cid = self.next_id
            self.next_id += 1
        start = time.monotonic()
        self.proc.stdin.write(f"{cid} {base64.b64encode(script.encode()).decode()}\n".encode())
        self.proc.stdin.flush()
        with self.cond:
            self.cond.wait_for(lambda: cid in self.results or self.broken, timeout)
            if cid not in self.results:
                # The agent is still busy (or gone): nothing later can trust this VM.
                self.broken = self.broken or f"command timed out after {timeout}s"
                self.transcript.append(f"$ {script.strip()}\n!! {self.broken}")
                raise Fail(f"{self.name}: {self.broken}: {script.strip()[:200]}")
            rc, out, err = self.results.pop(cid)
        res = Result(rc, out, ANSI.sub("", err), time.monotonic() - start)
        self.transcript.append(f"$ {script.strip()}\n{out}{res.err}[rc={rc}, {res.seconds:.2f}s]")
        if check and rc != 0:
            raise Fail(f"{self.name}: exit {rc}: {script.strip()[:200]}\n{out}{res.err}".rstrip())
        return res

    def tail(self, lines=25):
        try:
            with open(self.console, errors="replace") as f:
                console = f.read().splitlines()[-lines:]
        except OSError:
            console = []
        return (f"--- {self.name} console (last {lines} lines)\n" + "\n".join(console) +
                f"\n--- {self.name} last commands\n" + "\n".join(self.transcript))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.qemu_log.close()
