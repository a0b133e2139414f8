"""Stand-in for ansible-test's get-pip.py bootstrap script, for hosts that cannot reach
ci-files.testing.ansible.com: install pip from the interpreter's own ensurepip wheel,
then run ``pip install`` with the arguments ansible-test passes (which reach PyPI).
get-pip.py's own options (--no-setuptools, --no-wheel) only mean "do not add these".
ensurepip runs in a child process: in-process it sets PIP_CONFIG_FILE=/dev/null,
which would hide the host's pip configuration from the install that follows."""
import subprocess
import sys

GET_PIP_ONLY = ('--no-setuptools', '--no-wheel')

if __name__ == '__main__':
    subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade'], stdout=subprocess.DEVNULL)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    sys.exit(subprocess.call([sys.executable, '-m', 'pip', 'install'] + args))
