/*
 * /init of the cgroup v2 test VM (see run_in_vm.py beside this file).
 *
 * The guest kernel starts this as PID 1 from a small initramfs. It:
 *   1. loads the kernel modules found in /modules, in name order (the host
 *      names them so that a module comes after what it depends on);
 *   2. mounts the host's / read-only over 9p (tag "hostroot") on /newroot and
 *      the host's exchange directory read-write (tag "xfer") on /xfer;
 *   3. mounts proc, sysfs, devtmpfs, cgroup2 on /sys/fs/cgroup with cpu,
 *      io, memory and pids enabled for its children, the scratch disk
 *      /dev/vda (ext4, made by the host) on the directory named in
 *      xfer/disk, and a tmpfs on each directory named in xfer/scratch;
 *   4. makes /newroot the root, runs the command described by xfer/argv,
 *      xfer/env and xfer/cwd with the serial console as its stdio;
 *   5. writes how it ended to xfer/status and powers the VM off.
 *
 * xfer/argv, xfer/env and xfer/scratch hold NUL-terminated strings;
 * xfer/cwd and xfer/disk hold one path each; xfer/status gets
 * "exit N" or "signal N" (or "init-error WHAT: REASON" if the VM could not be
 * set up), then "started S" and "ended S", seconds since boot, for timing.
 *
 * Static and dependency-free on purpose: the initramfs has no libc to link
 * against, and PID 1 must not depend on anything in the root it mounts.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NEWROOT "/newroot"
/* 9p over virtio with large messages and the guest's page and dentry caches:
 * every Python process the tests start reads the same modules again, and
 * cached it starts 3-4 times faster under emulation (measured). The host's
 * files do not change under a test run in a way the guest could notice. */
#define ROOT_OPTS "trans=virtio,version=9p2000.L,msize=262144,cache=loose"
/* The exchange directory is written by both sides: no caching. */
#define XFER_OPTS "trans=virtio,version=9p2000.L,msize=262144,cache=none"
#define DISK "/dev/vda"
#define CONTROLLERS_FILE NEWROOT "/sys/fs/cgroup/cgroup.subtree_control"

static int xfer_fd = -1;

static double uptime(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* Still here: returning from PID 1 panics the kernel, and the VM runs
	 * with panic=-1 and -no-reboot, so it ends either way. */
	_exit(1);
}

/* Write the whole of buf to xfer/status; nothing else can be done on
 * failure than saying so on the console. */
static void write_status(const char *buf)
{
	int fd;
	size_t len = strlen(buf);

	if (xfer_fd < 0)
		return;
	fd = openat(xfer_fd, "status", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len || fsync(fd) < 0)
		fprintf(stderr, "vm-init: cannot write status: %s\n", strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Report a failure to set the VM up, where the host looks for it, and stop. */
static void die(const char *fmt, ...)
{
	char msg[512], status[600];
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(status, sizeof(status), "init-error %s: %s\n", msg, strerror(saved));
	fprintf(stderr, "vm-init: %s", status);
	write_status(status);
	power_off();
}

static void load_module(const char *name)
{
	char path[300];
	int fd;

	snprintf(path, sizeof(path), "/modules/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s", path);
	if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
		die("load module %s", name);
	close(fd);
}

static int is_module(const struct dirent *entry)
{
	return entry->d_name[0] != '.';
}

static void load_modules(void)
{
	struct dirent **entries;
	int n = scandir("/modules", &entries, is_module, alphasort);

	if (n < 0)
		die("list /modules");
	for (int i = 0; i < n; i++) {
		load_module(entries[i]->d_name);
		free(entries[i]);
	}
	free(entries);
}

static void mount_or_die(const char *source, const char *target,
			 const char *type, unsigned long flags, const char *opts)
{
	if (mount(source, target, type, flags, opts) < 0)
		die("mount %s on %s", type, target);
}

/* A virtio device is probed while its driver module loads, but give a slow
 * (emulated) machine a few seconds before calling a missing share an error. */
static void mount_9p(const char *tag, const char *target, unsigned long flags,
		     const char *opts)
{
	for (int tries = 0; mount(tag, target, "9p", flags, opts) < 0; tries++) {
		if (errno != ENOENT || tries >= 50)
			die("mount 9p share %s on %s", tag, target);
		usleep(100 * 1000);
	}
}

static void enable_controllers(void)
{
	static const char *const controllers[] = {"+cpu", "+io", "+memory", "+pids"};
	int fd = open(CONTROLLERS_FILE, O_WRONLY);

	if (fd < 0)
		die("open %s", CONTROLLERS_FILE);
	/* One write each, so that an error names the controller. */
	for (size_t i = 0; i < sizeof(controllers) / sizeof(controllers[0]); i++) {
		size_t len = strlen(controllers[i]);

		if (write(fd, controllers[i], len) != (ssize_t)len)
			die("enable cgroup controller %s", controllers[i]);
	}
	close(fd);
}

static void mount_system(void)
{
	mount_or_die("proc", NEWROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("sysfs", NEWROOT "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("cgroup2", NEWROOT "/sys/fs/cgroup", "cgroup2",
		     MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("devtmpfs", NEWROOT "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	/* devtmpfs has no shm or pts: Python's multiprocessing and pty users
	 * expect both. */
	if (mkdir(NEWROOT "/dev/shm", 01777) < 0 || mkdir(NEWROOT "/dev/pts", 0755) < 0)
		die("mkdir in /dev");
	mount_or_die("tmpfs", NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_or_die("devpts", NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		     "mode=0620,ptmxmode=0666");
	enable_controllers();
}

/* Read a whole xfer file; the buffer ends with an extra NUL. */
static char *read_xfer(const char *name, size_t *len)
{
	char *buf = NULL;
	size_t size = 0;
	ssize_t got;
	int fd = openat(xfer_fd, name, O_RDONLY);

	if (fd < 0)
		die("open xfer/%s", name);
	*len = 0;
	do {
		if (*len + 4096 + 1 > size) {
			size = (*len + 4096 + 1) * 2;
			buf = realloc(buf, size);
			if (buf == NULL)
				die("read xfer/%s", name);
		}
		got = read(fd, buf + *len, size - *len - 1);
		if (got < 0)
			die("read xfer/%s", name);
		*len += (size_t)got;
	} while (got > 0);
	close(fd);
	buf[*len] = '\0';
	return buf;
}

/* Split a file of NUL-terminated strings into a NULL-terminated vector. */
static char **read_strings(const char *name)
{
	size_t len, count = 0, i;
	char *buf = read_xfer(name, &len);
	char **vec;

	for (i = 0; i < len; i++)
		count += buf[i] == '\0';
	vec = calloc(count + 1, sizeof(*vec));
	if (vec == NULL)
		die("read xfer/%s", name);
	for (i = 0, count = 0; i < len; i += strlen(buf + i) + 1)
		vec[count++] = buf + i;
	return vec;
}

/* A tmpfs on each directory named in xfer/scratch: the root is read-only,
 * and the host chose these as not holding anything the command needs. */
static void mount_scratch(char **dirs)
{
	char path[4096];

	for (; *dirs != NULL; dirs++) {
		snprintf(path, sizeof(path), NEWROOT "%s", *dirs);
		mount_or_die("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	}
}

/* The scratch disk where the host asked for it: a real block device under
 * the command's temporary directory, so that IO limits have a disk to act
 * on. Open to every user, as a temporary directory is. */
static void mount_disk(const char *dir)
{
	char path[4096];

	snprintf(path, sizeof(path), NEWROOT "%s", dir);
	/* virtio_blk adds the disk while loading; allow for a slow machine. */
	for (int tries = 0; mount(DISK, path, "ext4", MS_NOSUID | MS_NODEV, "") < 0; tries++) {
		if (errno != ENOENT || tries >= 50)
			die("mount %s on %s", DISK, dir);
		usleep(100 * 1000);
	}
	if (chmod(path, 01777) < 0)
		die("chmod %s", dir);
}

/* Make /newroot the root for PID 1 and everything it starts, as
 * switch_root does (the initramfs cannot be pivoted away from). xfer_fd stays
 * usable: it was opened before. */
static void enter_newroot(void)
{
	if (chdir(NEWROOT) < 0)
		die("chdir " NEWROOT);
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
		die("move " NEWROOT " to /");
	if (chroot(".") < 0 || chdir("/") < 0)
		die("chroot " NEWROOT);
}

static pid_t start_command(char **argv, char **envp, const char *cwd)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork");
	if (pid == 0) {
		/* The command gets its own session, as a login would give it. */
		setsid();
		if (chdir(cwd) < 0) {
			fprintf(stderr, "vm-init: chdir %s: %s\n", cwd, strerror(errno));
			_exit(126);
		}
		execve(argv[0], argv, envp);
		fprintf(stderr, "vm-init: exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

/* Reap everything (PID 1 inherits orphans) until the command ends, then end
 * whatever it left behind so that the VM can stop. */
static int wait_command(pid_t command)
{
	int status, st;
	pid_t pid;

	while ((pid = wait(&st)) != command)
		if (pid < 0 && errno != EINTR)
			die("wait");
	status = st;
	kill(-1, SIGKILL);
	while (wait(&st) > 0 || errno == EINTR)
		;
	return status;
}

int main(void)
{
	char **argv, **envp, *cwd, status[128];
	size_t len;
	double started;
	int st;

	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	load_modules();
	mount_9p("xfer", "/xfer", MS_NOSUID | MS_NODEV, XFER_OPTS);
	xfer_fd = open("/xfer", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (xfer_fd < 0)
		die("open /xfer");
	mount_9p("hostroot", NEWROOT, MS_RDONLY, ROOT_OPTS);
	mount_system();
	mount_disk(read_xfer("disk", &len));
	mount_scratch(read_strings("scratch"));
	argv = read_strings("argv");
	envp = read_strings("env");
	cwd = read_xfer("cwd", &len);
	if (argv[0] == NULL) {
		errno = EINVAL;
		die("xfer/argv is empty");
	}
	enter_newroot();
	started = uptime();
	fprintf(stderr, "vm-init: running %s at %.2f s after boot\n", argv[0], started);
	st = wait_command(start_command(argv, envp, cwd));
	snprintf(status, sizeof(status), "%s %d\nstarted %.2f\nended %.2f\n",
		 WIFEXITED(st) ? "exit" : "signal",
		 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), started, uptime());
	write_status(status);
	fprintf(stderr, "vm-init: %s", status);
	power_off();
	return 0;
}
