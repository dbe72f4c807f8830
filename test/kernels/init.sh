#!/bin/busybox sh
# The guest's /init: set up what the kernel tests expect of a host, run each
# test binary as root with CI=true, and power off. Everything it reports
# that is not test output is a line starting with "@@portlife-kernels ",
# which the harness reads from the serial console.
/bin/busybox --install -s /bin
export PATH=/bin
M="@@portlife-kernels"

# must runs a setup step and reports a failure instead of stopping: a test
# that needs the missing piece fails with its own message, which says more.
must() {
	"$@" || echo "$M setup-failed $*"
}

must mount -t proc proc /proc
must mount -t sysfs sysfs /sys
must mount -t devtmpfs devtmpfs /dev
must mount -t tmpfs tmpfs /tmp
must mount -t tmpfs tmpfs /run
must mount -t bpf bpf /sys/fs/bpf
must mount -t cgroup2 cgroup2 /sys/fs/cgroup
must mount -t tracefs tracefs /sys/kernel/tracing
must mount -t debugfs debugfs /sys/kernel/debug
must ip link set lo up
[ -e /sys/kernel/btf/vmlinux ] || echo "$M setup-failed no /sys/kernel/btf/vmlinux"

. /etc/portlife-kernels.conf
for m in $MODULES; do
	must insmod "/modules/$m.ko"
done
# The share does not change while the guest runs, so the guest may cache
# it: the test binaries page in once, not over 9p at every fault.
if [ "$SHARE" = 9p ]; then
	must mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose share /share
fi

echo "$M release $(uname -r)"
# The console shows the kernel's warnings and errors as they come: a guest
# that hangs never gets to print the kernel's log, which comes after the
# tests. A task blocked for 30s is reported.
dmesg -c >/dev/null
echo 5 >/proc/sys/kernel/printk
echo 30 >/proc/sys/kernel/hung_task_timeout_secs

cd /tmp
for t in $TESTS; do
	# The adoption scale test holds 80,000 sockets on the host; an emulated
	# CPU takes minutes to make that many, so a guest adopts 8,000.
	EXTRA=
	[ "$t" = tracer.test ] && EXTRA=-adopt-conns=4000
	echo "$M start $t"
	CI=true PORTLIFE_BINARY=/share/portlife "/share/$t" -test.v -test.count=1 \
		-test.timeout="$TIMEOUT" ${RUN:+"-test.run=$RUN"} ${SKIP:+"-test.skip=$SKIP"} \
		${BENCH:+"-test.bench=$BENCH"} $EXTRA </dev/null 2>&1
	echo "$M end $t $?"
done

echo "$M dmesg"
dmesg
echo "$M done"
poweroff -f
