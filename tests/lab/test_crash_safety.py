"""kill -9 at any point of a bulk change: after the journal is written, while
the store's files are staged, after the kernel committed and before the store
is written, during the store's renames, during the recovery of the change before, or at a random moment.
The next call leaves kernel and store agreeing on one whole state, old or new;
so does a removal that goes over netlink, killed after or while it commits."""

import fcntl
import multiprocessing
import os
import random
import re
import signal
import time

import pytest

from engine import host as host_module
from engine import store as store_module
from engine.host import Host
from engine.integrity import compare
from engine.model import Binding, FilterRef

PORTS = 40
KILLS = 50
# the kill loop's seeds: CI runs one; more find more sequences of kill points (a sequence the
# first seed missed hid a recovery bug): VMGUARD_KILL_SEEDS="1 2 3" pytest tests/lab/test_crash_safety.py
SEEDS = [int(seed) for seed in os.environ.get("VMGUARD_KILL_SEEDS", "9").split()]


def _generation(number, filter_name="clean-traffic"):
    """The bindings of change ``number``: every address changes, and the port count."""
    count = PORTS + (number % 3) * 5
    return [Binding(f"k{i}", f"52:54:00:20:00:{i:02x}", FilterRef(filter_name, {"IP": (f"10.{number % 250}.0.{i + 1}",)}))
            for i in range(count)]


def _die_at(point, renames):
    """Make this (child) process kill itself at ``point`` of the next change."""
    if point == "journal written":
        begin = store_module.Store.begin
        store_module.Store.begin = lambda self, plan: (begin(self, plan), os.kill(os.getpid(), signal.SIGKILL))
    elif point == "kernel committed":
        store_module.Store.finish = lambda self, plan, staged=None: os.kill(os.getpid(), signal.SIGKILL)
    elif point == "staging":  # the store's writer thread, while the kernel takes the transaction or after it
        run = store_module.Staging._run  # pylint: disable=protected-access

        def stage_then_die(self, files):
            run(self, files)
            os.kill(os.getpid(), signal.SIGKILL)
        store_module.Staging._run = stage_then_die  # pylint: disable=protected-access
    elif point == "renaming":
        replace, done = os.replace, []

        def replace_then_die(src, dst):
            replace(src, dst)
            done.append(dst)
            if len(done) >= renames:
                os.kill(os.getpid(), signal.SIGKILL)
        store_module.os.replace = replace_then_die


def _run_child(target, args, point, rng, longest):
    """``target(*args)`` in a forked child, killed after up to ``longest``
    seconds when ``point`` is "anytime" (else it kills itself there): its exit code."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    if point == "anytime":
        time.sleep(rng.uniform(0, longest))
        os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    assert child.exitcode in (0, -signal.SIGKILL)
    return child.exitcode


def _child(root, netns, number, point, renames):
    random.seed(number)
    _die_at(point, renames)
    Host(root, netns=netns).set_bindings(_generation(number), exclusive=True)
    os._exit(0)  # pylint: disable=protected-access


def _agree(host, seen):
    """Kernel and store hold the same whole state, one of the changes ``seen``: its number."""
    state = host._load()  # pylint: disable=protected-access
    assert host.store.journal() is None
    addresses = {p: b.filterref.parameters["IP"][0] for p, b in state.bindings.items()}
    numbers = {address.split(".")[1] for address in addresses.values()}
    assert len(numbers) == 1, f"a mix of changes: {sorted(numbers)}"
    octet = numbers.pop()
    number = next(n for n in seen if str(n % 250) == octet)
    assert sorted(addresses) == sorted(b.portdev for b in _generation(number))
    index = state.index.all()
    ids = [entry[0] for entry in index.values()]
    assert len(ids) == len(set(ids)) and set(index) == set(state.bindings) and len(state.index) == len(index)
    kernel = host.nft.kernel()
    assert not compare({p: state.installed.get(p) for p in state.bindings}, kernel, host.store.kernel_contents("base")).problems
    listing = host.nft._run(["list", "table", "bridge", "vmguard"])  # pylint: disable=protected-access
    # each port's address in its shape's set of them (nft lists an element per line: "vnet0" . 10.3.0.1)
    in_force = dict(re.findall(r'"(\S+)" \. (\d+\.\d+\.\d+\.\d+)', listing))
    assert in_force == addresses
    return number


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_anywhere_in_bulk_changes(lab, tmp_path, seed):
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    host.set_bindings(_generation(0))
    seen, kills, points = [0], 0, ["journal written", "staging", "kernel committed", "renaming", "anytime"]
    rng = random.Random(seed)
    number = 0
    while kills < KILLS and number < 3 * KILLS:
        number += 1
        point = points[number % len(points)]
        exitcode = _run_child(_child, (root, lab.host, number, point, rng.randint(1, PORTS + 10)), point, rng, 0.25)
        kills += exitcode == -signal.SIGKILL
        seen.append(number)
        # every other time the next child finds the mess (and may itself be killed recovering)
        if number % 2 == 0:
            result = host.restore() if number % 4 == 0 else host.converge()
            assert not result.skipped
            _agree(host, seen)
    assert kills >= KILLS
    host.converge()
    number = _agree(host, seen)
    assert not host.set_bindings(_generation(number), exclusive=True).changed  # nothing left to repair


def test_a_change_killed_in_its_renames_is_undone_whole(lab, tmp_path):
    """Its port records (not journaled) are written before the renames: the
    undo's repair must not trust them for what the shapes' sets hold, or the
    new addresses stay in force beside the old ones (found by the loop above
    with another sequence of kill points)."""
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    host.set_bindings(_generation(0))
    assert _run_child(_child, (root, lab.host, 1, "renaming", 3), "renaming", None, 0) == -signal.SIGKILL
    assert host.store.journal() is not None
    assert host.converge().changed
    assert _agree(host, [0, 1]) == 0


def _shape_child(root, netns):
    _die_at("renaming", 3)
    Host(root, netns=netns).set_bindings(_generation(0, "no-ip-spoofing"), exclusive=True)
    os._exit(0)  # pylint: disable=protected-access


def test_a_change_of_shape_killed_in_its_renames_leaves_no_shape_behind(lab, tmp_path):
    """The undone change had replaced the ports' shape: the repair puts the
    old one back and deletes the new one, which no port uses."""
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    host.set_bindings(_generation(0))
    assert _run_child(_shape_child, (root, lab.host), "renaming", None, 0) == -signal.SIGKILL
    assert host.converge().changed
    _agree(host, [0])
    listing = host.nft._run(["list", "ruleset"])  # pylint: disable=protected-access
    assert set(re.findall(r"chain (s/[0-9a-f]+)/", listing)) == set(host._load().shapes())  # pylint: disable=protected-access
    assert not host.converge().changed


def _removal_child(root, netns, point, keep):
    _die_at(point, 0)
    Host(root, netns=netns).set_bindings(keep, exclusive=True)
    os._exit(0)  # pylint: disable=protected-access


def test_kill_during_a_removal_over_netlink(lab, tmp_path):
    """A change that only removes ports goes over netlink in one batch: killed
    after the kernel committed it, or at any moment, the next call leaves the
    kernel and the store at one whole state, all ports or the few kept."""
    root = str(tmp_path / "store")
    host = Host(root, netns=lab.host)
    every = _generation(0) + [Binding(f"m{i}", f"52:54:00:21:00:{i:02x}", FilterRef("clean-traffic", {"IP": (f"10.21.0.{i}",)}))
                              for i in range(1, 101)]
    keep = every[:5]
    rng = random.Random(5)
    outcomes = set()
    for number in range(10):
        host.set_bindings(every, exclusive=True)
        point = ("kernel committed", "anytime")[number % 2]
        exitcode = _run_child(_removal_child, (root, lab.host, point, keep), point, rng, 0.1)
        host.converge()
        state = host._load()  # pylint: disable=protected-access
        assert host.store.journal() is None and len(state.bindings) in (len(every), len(keep))
        assert not compare({p: state.installed.get(p) for p in state.bindings}, host.nft.kernel(),
                           host.store.kernel_contents("base")).problems
        outcomes.add((exitcode, len(state.bindings)))
    assert (-signal.SIGKILL, len(every)) in outcomes


def _many(number, more=()):
    return [Binding(f"w{i}", f"52:54:00:22:{i >> 8:02x}:{i & 0xff:02x}",
                    FilterRef("clean-traffic", {"IP": (f"10.{22 + number}.{i >> 8}.{i & 0xff}",) + more}))
            for i in range(300)]


def _slow_workers_child(root, netns, marks):
    """A bulk change whose forked compile workers (engine.parallel) each mark
    their start and take 10 ms a port: time to kill this process under them."""
    parent, program = os.getpid(), host_module._program  # pylint: disable=protected-access

    def slow(state, portdev, *key):
        if os.getpid() != parent:
            with open(os.path.join(marks, str(os.getpid())), "w", encoding="utf-8"):
                pass
            time.sleep(0.01)
        return program(state, portdev, *key)
    host_module._program = slow  # pylint: disable=protected-access
    # two addresses each: no port is made from another's template (nft_compile.Template), all go to the workers
    Host(root, netns=netns).set_bindings(_many(1, ("10.99.0.1",)), exclusive=True)
    os._exit(0)  # pylint: disable=protected-access


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_while_its_workers_compile(lab, tmp_path):
    """kill -9 of a change while its forked workers compile: the store's lock
    is free at once, though they still run, and the next call finds the old
    state whole (the change had not reached its journal)."""
    root, marks = str(tmp_path / "store"), tmp_path / "workers"
    marks.mkdir()
    host = Host(root, netns=lab.host)
    host.set_bindings(_many(0))
    child = multiprocessing.get_context("fork").Process(target=_slow_workers_child, args=(root, lab.host, str(marks)))
    child.start()
    deadline = time.monotonic() + 60
    while not os.listdir(marks) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    workers = [int(name) for name in os.listdir(marks)]
    assert workers and any(_running(pid) for pid in workers)
    with open(os.path.join(root, ".lock"), encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while anyone holds it
    assert not host.converge().changed and host.store.journal() is None
    state = host._load()  # pylint: disable=protected-access
    assert {p: b.filterref.parameters["IP"][0] for p, b in state.bindings.items()} == \
        {b.portdev: b.filterref.parameters["IP"][0] for b in _many(0)}
    assert not compare({p: state.installed.get(p) for p in state.bindings}, host.nft.kernel(),
                       host.store.kernel_contents("base")).problems
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:  # they end by themselves
        time.sleep(0.05)
    assert not any(_running(pid) for pid in workers)
