"""``python -m swarmlab.lab``: inspect or remove lab nodes on this machine.

    python -m swarmlab.lab status                 # what the default lab has running
    python -m swarmlab.lab down                   # remove the default lab (swl), leftovers included
    python -m swarmlab.lab down --spec FILE       # remove the lab a spec describes
    python -m swarmlab.lab down --all-test-labs   # remove every lab whose folder or namespaces exist
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from swarmlab.lab import Lab
from swarmlab.lab.network import NETNS_DIR
from swarmlab.spec import DEFAULT_SPEC, LabSettings, SpecError, load_spec

# Lab namespaces are "<prefix>-<node>"; prefixes are 2-6 lowercase characters starting "sw".
NAMESPACE = re.compile(r"^(sw[a-z0-9]{0,4})-")
PREFIX = re.compile(r"sw[a-z0-9]{0,4}")


def known_labs(state_dir: Path) -> list[LabSettings]:
    """Return the settings of every lab with a folder, namespaces or bridge on this machine.

    Bridges are assumed to follow the "<prefix>0" pattern (swl0 for the default lab swl).
    """
    folders = state_dir.iterdir() if state_dir.exists() else []
    prefixes = {p.name for p in folders if p.is_dir() and PREFIX.fullmatch(p.name)}
    if NETNS_DIR.exists():
        prefixes |= {m.group(1) for p in NETNS_DIR.iterdir() if (m := NAMESPACE.match(p.name))}
    for bridge in Path("/sys/class/net").iterdir():
        if re.fullmatch(r"sw[a-z0-9]{0,4}0", bridge.name):
            prefixes.add(bridge.name[:-1])
    labs = []
    for prefix in sorted(prefixes):
        bridge = "swl0" if prefix == "swl" else f"{prefix}0"
        labs.append(LabSettings(prefix=prefix, bridge=bridge, state_dir=str(state_dir)))
    return labs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarmlab.lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["status", "down"])
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="spec whose provider.lab settings to use")
    parser.add_argument("--all-test-labs", action="store_true",
                        help="act on every lab found on this machine, whatever its prefix")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = load_spec(args.spec).provider.lab
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    labs = known_labs(Path(settings.state_dir)) if args.all_test_labs else [settings]
    failed = False
    for lab_settings in labs:
        lab = Lab(lab_settings)
        if args.command == "status":
            states = lab.states()
            running = [s.name for s in states if lab.is_running(s.name)]
            names = ", ".join(running) or "none"
            line = f"lab {lab_settings.prefix}: {len(running)}/{len(states)} nodes running ({names})"
            if not states:
                line += f"; leftovers of earlier labs: {lab.leftovers().describe()}"
            print(line)
            continue
        remaining = lab.down()
        if not remaining.empty():
            failed = True
            print(f"lab {lab_settings.prefix}: still present after down: {remaining.describe()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
