# vmguard.nwfilter: the two commands of the README, and the steps behind them.
# Everything is installed here: apt packages on the machine, Python packages
# into the project-local .venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD := .build
COLLECTION := $(BUILD)/collections/ansible_collections/vmguard/nwfilter
APT_PACKAGES := nftables iptables ebtables iproute2 libvirt-daemon libvirt-daemon-system \
	libvirt-daemon-config-nwfilter libvirt-clients dnsmasq-base isc-dhcp-client python3-venv git \
	qemu-system-x86 linux-image-cloud-amd64 busybox-static
PYTEST_ARGS ?=

.PHONY: setup apt venv collection test unit lab sanity demo bench clean

setup: apt venv collection $(VENV)/bin/vmguard-learner

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-dev.txt requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The learner service from this clone (docs/learner.md); the role installs its own copy on hosts.
$(VENV)/bin/vmguard-learner: $(VENV)/.installed
	@printf '#!/bin/sh\nPYTHONPATH=%s:%s/plugins/module_utils$${PYTHONPATH:+:$$PYTHONPATH} exec %s -m learner "$$@"\n' \
		"$(CURDIR)" "$(CURDIR)" "$(abspath $(PY))" >$@ && chmod 0755 $@

# Ansible finds collections only under ansible_collections/<ns>/<name>: a
# copy of the tracked (and new, not ignored) files, refreshed on every run.
collection:
	@rm -rf $(COLLECTION) && mkdir -p $(COLLECTION)
	@git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C $(COLLECTION)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests
	$(MAKE) --no-print-directory sanity

unit: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

# ansible-test lists a collection's files through git, so the copy gets its own index;
# tests/tools/get_pip_offline.py stands in for the bootstrap script it downloads.
GET_PIP_CACHE := $(HOME)/.ansible/test/cache/get_pip_24_2.py
sanity: setup
	@test -f $(GET_PIP_CACHE) || install -D -m 0644 tests/tools/get_pip_offline.py $(GET_PIP_CACHE)
	cd $(COLLECTION) && git init -q . && git add -A && \
		$(abspath $(VENV))/bin/ansible-test sanity --python 3.11 --color no

demo: setup
	$(PY) -m lab.demo

bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.networks

clean:
	rm -rf $(BUILD) $(VENV) .pytest_cache .hypothesis
