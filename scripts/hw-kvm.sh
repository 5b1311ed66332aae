#!/usr/bin/env bash
# Exit 0 when this host's /dev/kvm boots stock kernels (VMX/SVM), 1 when it is PVM-only or
# absent, so callers know whether guests must run inside sm-testvm.
m=/sys/module
[ -e /dev/kvm ] || exit 1
if [ -d $m/kvm_pvm ] && [ ! -d $m/kvm_intel ] && [ ! -d $m/kvm_amd ]; then exit 1; fi
[ -d $m/kvm_intel ] || [ -d $m/kvm_amd ]
