"""`python -m lab.cleanup`: remove namespaces a crashed lab left behind."""

import subprocess

if __name__ == "__main__":
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("vmg"):
            subprocess.run(["ip", "netns", "del", name], check=False)
