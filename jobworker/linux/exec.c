/*
 * jobworker-exec: what a job's process does between spawn and exec.
 *
 * The server spawns this small program (through posix_spawn, whose cost does
 * not grow with the server's memory) instead of the job's command. It puts
 * the process where the job belongs, then execs the command, so that the
 * command's first instruction already runs there.
 *
 *   jobworker-exec [OPTION]... -- FILE ARGV0 [ARG...]
 *
 * Options (each step runs in the order listed, whatever the order given):
 *   --status-fd N        report on fd N (default 3), see below
 *   --cgroup-procs PATH  write "0" to PATH, a cgroup.procs (or v1 tasks)
 *                        file, joining that cgroup; repeatable (one per v1
 *                        hierarchy). Done first, while the helper is one
 *                        thread, so nothing after escapes the job's limits.
 *   --isolate            the helper must be PID 1 of a PID namespace that the
 *                        server made for it. It unshares mount, UTS, IPC,
 *                        cgroup and network namespaces, builds the job's view
 *                        of the filesystem (see "View" below), sets the
 *                        hostname, brings lo up; then forks the command as
 *                        PID 2 and stays as the namespace's init (see "Init").
 *   --network none|host  with --isolate: "none" (default) is a new network
 *                        namespace with only lo; "host" keeps the server's
 *   --hostname NAME      with --isolate: the hostname (default "jobworker")
 *   --tmpfs-size BYTES   with --isolate: the size of each private tmpfs
 *   --tmpfs-inodes N     and its inodes (defaults 256 MiB and 65536)
 *   --mask PATH          with --isolate: hide PATH, a real path (no symlink
 *                        on the way); skipped if it does not exist;
 *                        repeatable
 *   --writable PATH      with --isolate: PATH stays writable, a real path;
 *                        repeatable
 *   --passwd-entry NAME:HOME:SHELL
 *                        with --isolate and --uid: the job's view has a user
 *                        NAME of --uid and a group NAME of --gid, with HOME
 *                        and SHELL (see "View", 5), for a uid of the job's own
 *   --hold-fd N          with --isolate: init keeps fd N open until it exits,
 *                        which is once every process of the job is gone
 *                        (see "Init"); the command never has it. The server
 *                        passes a uid's lock this way.
 *   --uid N --gid N      run the command as this user and group (both or
 *                        neither); whatever the user, even uid 0, and with
 *                        or without these, the command has no capabilities
 *                        and no way to gain any (see "Capabilities")
 *   --groups G[,G...]    with --uid: the supplementary groups (default none;
 *                        root's are always dropped)
 *   --cwd DIR            the command's working directory, entered after
 *                        privileges are dropped: the user must be allowed in.
 *                        Default: the private /tmp with --isolate, else /.
 *   --seccomp-fd N       a seccomp BPF program (struct sock_filter after
 *                        another) in fd N, read at once (with pread: the fd's
 *                        offset may be shared), then closed; the command's
 *                        process loads it, with PR_SET_NO_NEW_PRIVS, as its
 *                        very last step before execve
 *
 * Without --isolate, --uid and --cgroup-procs the helper does what it always
 * did: setsid, chdir, exec; but the command has no capabilities.
 *
 * Capabilities. The command's process, however it runs and as whom, gives
 * up every capability before its chdir: bounding, permitted, effective,
 * inheritable and ambient sets empty, securebits locked so that uid 0
 * gains none back (SECBIT_NOROOT), and PR_SET_NO_NEW_PRIVS. A job whose
 * role runs it as root is uid 0 with no more power than the files owned by
 * uid 0 give it (the reasons are by the code: lock_out_capabilities).
 *
 * View. An isolated job sees the host's files read-only, its own scratch
 * space, and nothing of the server's. In its mount namespace, in this order
 * (each step's reason is by its code):
 *   1. every mount private (nothing below reaches the host);
 *   2. the --mask paths covered: a directory by an empty read-only tmpfs, a
 *      file by a bind of the host's /dev/null (which 3 makes unopenable);
 *   3. the whole tree read-only, nosuid and nodev, recursively
 *      (mount_setattr: a bind remount of / would not reach the mounts
 *      under it);
 *   4. each --writable path bound over itself, writable again (that mount
 *      alone: mounts under it stay read-only);
 *   5. with --passwd-entry, /etc/passwd and /etc/group covered by read-only
 *      copies: the host's entries (but one of the same NAME), then the
 *      job's. Written into a small tmpfs over the host's /dev, made read-only
 *      and bound over each file (one the host lacks is skipped), which 8
 *      then covers: the job reaches it only through the two files;
 *   6. fresh /proc (/proc/sys read-only) and read-only /sys, as before;
 *   7. private tmpfs on /tmp and /var/tmp (1777), /run (0755) and /run/lock
 *      (1777), nosuid and nodev, each of --tmpfs-size and --tmpfs-inodes;
 *      a mount point the host lacks is skipped;
 *   8. a new /dev: a tmpfs with null, zero, full, random, urandom and tty
 *      (made with mknod), a devpts of its own at /dev/pts, /dev/ptmx, the
 *      fd, stdin, stdout and stderr links, and /dev/shm (a tmpfs as in 7);
 *      then /dev read-only but for pts and shm.
 * Every tmpfs page a job writes is charged to its memory cgroup; every
 * mount goes with the namespace, when the job's last process ends.
 *
 * Go-ahead. Before the command exists (before init forks it, or before
 * the exec) the helper reads its stdin to end of file. The server writes the
 * job's environment there, once the job's record names this process (its
 * pid), then closes it, which the command sees as end of file:
 *
 *   NAME=VALUE\0 ... NAME=VALUE\0 \0
 *
 * each variable ended by a NUL, the whole ended by one more. Only a whole
 * message is a go-ahead. A server that dies before sending it leaves less:
 * its record cannot name the process, so no one would ever find and kill
 * the job; the helper exits having run nothing. Joining the cgroups and
 * making the namespaces come first, meanwhile: they are most of a start, and
 * the server records the pid in the same time.
 *
 * Environment. The helper runs as root, so nothing of the job may reach it
 * before privileges are gone: the server spawns it with an empty environment
 * (a job's LD_PRELOAD, LD_AUDIT or GCONV_PATH would otherwise run code as
 * root), and the job's environment comes as the data above, given to execve
 * of the command alone. A FILE without a slash is looked up on the PATH of
 * that environment (or DEFAULT_PATH), after the drop to the job's user and
 * the chdir, so it finds what the job itself would find.
 *
 * Command. An isolated job's command gets oom_score_adj 0 (its init has
 * -1000: the OOM killer takes the command, never the init that reports it)
 * and these limits, none above the server's own hard limit: open files 1024
 * (hard 524288), no core dumps, and processes 4096 (RLIMIT_NPROC). The kernel counts that last one per real
 * uid across the host: jobs sharing a run_as user share it, with each
 * other and with that user's other processes. It keeps a fork bomb from
 * taking the host's pids (32768 on a small host); a job's own bound is
 * its cgroup's pids limit.
 *
 * Status protocol on fd N, one line per event:
 *   "error <stage> <errno>\n"  setup or exec failed; the command never ran.
 *       stage: close cgroup setsid oom pidns unshare mount mask readonly
 *              writable passwd tmpfs dev hostname lo go pipe fork rlimit
 *              caps setgroups setgid setuid prctl chdir seccomp exec
 *   Without --isolate a successful exec closes fd N (close-on-exec) silently.
 *   With --isolate the helper stays, so it says what it cannot show:
 *   "running\n"                the command was exec'd
 *   "exit <code>\n"            the command exited with <code>
 *   "signal <number>\n"        the command was killed by signal <number>
 *   after which init exits (with <code>, or 128 + <number>).
 *
 * Init. The kernel treats a PID namespace's PID 1 specially: signals it has
 * no handler for are dropped when sent from inside, and orphans are
 * reparented to it. So the command does not run as PID 1 (a job could not
 * kill itself, and zombies would pile up) but as its child: init forwards
 * every catchable signal to the command, reaps every child, and exits when
 * the command does, once it has killed and reaped what is left of the
 * namespace: when init is gone, so is every process of the job (the kernel
 * would kill them too, but only after init's descriptors are closed, and
 * --hold-fd's must outlast them).
 * Init stays root: a job running as another user can neither signal, trace
 * nor read it, so it cannot forge its own status lines.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

/* The mount API's constants, where the C library's headers predate it (the
 * kernel's numbers are the same on every architecture but alpha). */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef MOUNT_ATTR_NOSUID
#define MOUNT_ATTR_NOSUID 0x00000002
#endif
#ifndef MOUNT_ATTR_NODEV
#define MOUNT_ATTR_NODEV 0x00000004
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOVE_MOUNT_T_EMPTY_PATH
#define MOVE_MOUNT_T_EMPTY_PATH 0x00000040
#endif
#ifndef RESOLVE_NO_SYMLINKS
#define RESOLVE_NO_SYMLINKS 0x04
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

/* The kernel's struct mount_attr and struct open_how, by other names: the
 * C library may define the first, and not the second. */
struct mount_attributes {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
struct resolution {
    uint64_t flags, mode, resolve;
};

#define MAX_CGROUPS 16
#define MAX_PATHS 64
/* The server's defaults (launcher.py), for other callers. */
#define DEFAULT_TMPFS_SIZE (256ULL << 20)
#define DEFAULT_TMPFS_INODES 65536UL
/* The command's limits (see "Command" above). */
#define NOFILE_SOFT 1024
#define NOFILE_HARD 524288
#define NPROC_LIMIT 4096
/* The most the go-ahead may hold: above what the kernel lets execve take. */
#define MAX_GO_AHEAD (8 << 20)
/* The most the host's /etc/passwd or /etc/group may hold ("View", 5); the
 * size of the tmpfs their copies are written to, which is charged to the
 * job's memory cgroup. */
#define MAX_ENTRIES (4 << 20)
/* Where a bare FILE is looked up if the job's environment has no PATH: the
 * server's default for jobs (DEFAULT_JOB_PATH in launcher.py), which the
 * server sends itself; this is for other callers. */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct options {
    const char *cgroup_procs[MAX_CGROUPS];
    int ncgroups;
    int isolate;
    int host_network;
    const char *hostname;
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    size_t ngroups;
    const char *cwd;
    struct sock_fprog seccomp; /* len 0: no filter */
    unsigned long long tmpfs_size;
    unsigned long tmpfs_inodes;
    const char *masks[MAX_PATHS];
    int nmasks;
    const char *writable[MAX_PATHS];
    int nwritable;
    /* --passwd-entry's parts; user_name NULL: none */
    char *user_name, *user_home, *user_shell;
    int hold_fd; /* -1: none */
    char **command; /* FILE ARGV0 [ARG...] */
    char **env;     /* the job's, from the go-ahead */
    /* What was given, to refuse combinations that make no sense. */
    int given_uid, given_gid, given_groups, given_namespace_option;
};

/* Where lines go: the server's status fd; in init's child before its exec,
 * the pipe through which init learns the outcome. */
static int status_fd = 3;

static void report(const char *line)
{
    size_t len = strlen(line);
    while (len > 0) {
        ssize_t n = write(status_fd, line, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        line += n;
        len -= (size_t)n;
    }
}

static void fail(const char *stage, int err)
{
    char line[128];
    snprintf(line, sizeof line, "error %s %d\n", stage, err);
    report(line);
    _exit(127);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: jobworker-exec [--status-fd N] [--cgroup-procs PATH]...\n"
            "         [--isolate [--network none|host] [--hostname NAME]\n"
            "           [--tmpfs-size BYTES] [--tmpfs-inodes N]\n"
            "           [--mask PATH]... [--writable PATH]...\n"
            "           [--passwd-entry NAME:HOME:SHELL] [--hold-fd N]]\n"
            "         [--uid N --gid N [--groups G,...]] [--cwd DIR]\n"
            "         [--seccomp-fd N]\n"
            "         -- FILE ARGV0 [ARG...]\n");
    _exit(127);
}

/* Options */

/* Decimal digits only, up to max; ids stop short of (uid_t)-1, which
 * means "unchanged" to the kernel. */
static unsigned long parse_number(const char *text, unsigned long max)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || n > max)
        usage();
    return n;
}

/* "" is no group at all. */
static void parse_groups(struct options *o, const char *text)
{
    if (o->given_groups)
        usage();
    o->given_groups = 1;
    size_t count = *text ? 1 : 0;
    for (const char *c = text; *c; c++)
        count += *c == ',';
    char *copy = strdup(text);
    o->groups = calloc(count ? count : 1, sizeof *o->groups);
    if (copy == NULL || o->groups == NULL)
        usage();
    char *saved, *item = strtok_r(copy, ",", &saved);
    for (; item != NULL; item = strtok_r(NULL, ",", &saved))
        o->groups[o->ngroups++] = (gid_t)parse_number(item, (gid_t)-2);
    if (o->ngroups != count)
        usage(); /* an empty item, as in "1,,2" */
    free(copy);
}

/* The program in fd, read now, while the helper is still root and the fd
 * still open (close_inherited closes it). */
static void read_seccomp_filter(struct options *o, int fd)
{
    struct stat st;
    if (o->seccomp.len != 0)
        usage();
    if (fstat(fd, &st) < 0)
        fail("seccomp", errno);
    size_t size = (size_t)st.st_size;
    if (size == 0 || size % sizeof(struct sock_filter) != 0 ||
        size > BPF_MAXINSNS * sizeof(struct sock_filter))
        fail("seccomp", EINVAL);
    struct sock_filter *program = malloc(size);
    if (program == NULL)
        fail("seccomp", ENOMEM);
    for (size_t done = 0; done < size;) {
        ssize_t n = pread(fd, (char *)program + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("seccomp", n < 0 ? errno : EINVAL);
        done += (size_t)n;
    }
    o->seccomp.len = (unsigned short)(size / sizeof(struct sock_filter));
    o->seccomp.filter = program;
}

/* NAME:HOME:SHELL, each part fit for a passwd line: a name with no slash,
 * absolute paths, nothing that would end a field or a line. */
static void parse_passwd_entry(struct options *o, const char *text)
{
    if (o->user_name != NULL || strlen(text) > 1024 || strchr(text, '\n'))
        usage();
    char *copy = strdup(text);
    if (copy == NULL)
        usage();
    char *home = strchr(copy, ':');
    char *shell = home ? strchr(home + 1, ':') : NULL;
    if (shell == NULL || strchr(shell + 1, ':') != NULL)
        usage();
    *home++ = '\0';
    *shell++ = '\0';
    if (copy[0] == '\0' || strchr(copy, '/') || home[0] != '/' || shell[0] != '/')
        usage();
    o->user_name = copy;
    o->user_home = home;
    o->user_shell = shell;
}

static const char *value(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc)
        usage();
    return argv[++*i];
}

/* An absolute path, one more of at most MAX_PATHS. */
static void add_path(const char **paths, int *count, const char *path)
{
    if (*count == MAX_PATHS || path[0] != '/')
        usage();
    paths[(*count)++] = path;
}

static void parse_option(struct options *o, int argc, char **argv, int *i)
{
    const char *name = argv[*i];
    if (strcmp(name, "--status-fd") == 0) {
        status_fd = (int)parse_number(value(argc, argv, i), 1 << 20);
    } else if (strcmp(name, "--cgroup-procs") == 0) {
        if (o->ncgroups == MAX_CGROUPS)
            usage();
        o->cgroup_procs[o->ncgroups++] = value(argc, argv, i);
    } else if (strcmp(name, "--isolate") == 0) {
        o->isolate = 1;
    } else if (strcmp(name, "--network") == 0) {
        const char *mode = value(argc, argv, i);
        if (strcmp(mode, "host") != 0 && strcmp(mode, "none") != 0)
            usage();
        o->host_network = strcmp(mode, "host") == 0;
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--hostname") == 0) {
        o->hostname = value(argc, argv, i);
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--tmpfs-size") == 0) {
        /* Not 0: to tmpfs, that is no limit at all. */
        o->tmpfs_size = parse_number(value(argc, argv, i), ULONG_MAX);
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--tmpfs-inodes") == 0) {
        o->tmpfs_inodes = parse_number(value(argc, argv, i), UINT_MAX);
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--mask") == 0) {
        add_path(o->masks, &o->nmasks, value(argc, argv, i));
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--writable") == 0) {
        add_path(o->writable, &o->nwritable, value(argc, argv, i));
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--passwd-entry") == 0) {
        parse_passwd_entry(o, value(argc, argv, i));
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--hold-fd") == 0) {
        o->hold_fd = (int)parse_number(value(argc, argv, i), 1 << 20);
        o->given_namespace_option = 1;
    } else if (strcmp(name, "--uid") == 0) {
        o->uid = (uid_t)parse_number(value(argc, argv, i), (uid_t)-2);
        o->given_uid = 1;
    } else if (strcmp(name, "--gid") == 0) {
        o->gid = (gid_t)parse_number(value(argc, argv, i), (gid_t)-2);
        o->given_gid = 1;
    } else if (strcmp(name, "--groups") == 0) {
        parse_groups(o, value(argc, argv, i));
    } else if (strcmp(name, "--cwd") == 0) {
        o->cwd = value(argc, argv, i);
    } else if (strcmp(name, "--seccomp-fd") == 0) {
        read_seccomp_filter(o, (int)parse_number(value(argc, argv, i), 1 << 20));
    } else {
        usage();
    }
}

static void parse_options(struct options *o, int argc, char **argv)
{
    int i = 1;
    o->hostname = "jobworker";
    o->tmpfs_size = DEFAULT_TMPFS_SIZE;
    o->tmpfs_inodes = DEFAULT_TMPFS_INODES;
    o->hold_fd = -1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++)
        parse_option(o, argc, argv, &i);
    /* Half a user, or namespace options without namespaces, is a mistake
     * of the caller's: refuse it rather than guess. */
    if (o->given_uid != o->given_gid || (o->given_groups && !o->given_uid) ||
        (o->given_namespace_option && !o->isolate) || o->tmpfs_size == 0 ||
        o->tmpfs_inodes == 0 || (o->user_name != NULL && !o->given_uid) ||
        (o->hold_fd >= 0 && (o->hold_fd < 3 || o->hold_fd == status_fd)))
        usage();
    if (argc - i < 3) /* "--", FILE, ARGV0 */
        usage();
    o->command = &argv[i + 1];
}

/* Setup, in the helper */

/* All of fd, up to its end of file, at most max bytes; a failure exits,
 * saying stage. There is room for one more byte after the *size read. */
static char *read_all(int fd, const char *stage, size_t max, size_t *size)
{
    size_t capacity = 4096;
    char *data = malloc(capacity);
    *size = 0;
    for (;;) {
        if (*size == capacity) {
            if (capacity >= max)
                fail(stage, E2BIG);
            capacity *= 2;
            data = realloc(data, capacity);
        }
        if (data == NULL)
            fail(stage, ENOMEM);
        ssize_t n = read(fd, data + *size, capacity - *size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail(stage, errno);
        if (n == 0)
            return data;
        *size += (size_t)n;
    }
}

/* All of stdin. (A failure exits: nothing to free.) */
static char *read_stdin(size_t *size)
{
    return read_all(0, "go", MAX_GO_AHEAD, size);
}

/* Read the go-ahead (see "Go-ahead" above) into o->env, or exit. Its
 * strings stay where they were read; o->env points at them. */
static void read_go_ahead(struct options *o)
{
    size_t size, count = 0;
    char *data = read_stdin(&size);
    size_t at = 0;
    for (;;) {
        char *end = at < size ? memchr(data + at, '\0', size - at) : NULL;
        if (end == NULL)
            fail("go", EPIPE); /* cut short: the server went away */
        if (end == data + at)
            break; /* the empty string that ends the message */
        char *equals = memchr(data + at, '=', (size_t)(end - (data + at)));
        if (equals == NULL || equals == data + at)
            fail("go", EINVAL); /* not NAME=VALUE */
        count++;
        at = (size_t)(end - data) + 1;
    }
    if (at + 1 != size)
        fail("go", EINVAL); /* something after the end */
    o->env = calloc(count + 1, sizeof *o->env);
    if (o->env == NULL)
        fail("go", ENOMEM);
    for (size_t k = 0, start = 0; k < count; k++) {
        o->env[k] = data + start;
        start += strlen(data + start) + 1;
    }
}

static void join_cgroups(const struct options *o)
{
    for (int k = 0; k < o->ncgroups; k++) {
        int fd = open(o->cgroup_procs[k], O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            fail("cgroup", errno);
        if (write(fd, "0", 1) != 1)
            fail("cgroup", errno);
        close(fd);
    }
}

/* 0 or -1 (errno set). */
static int write_oom_score(const char *score)
{
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, score, strlen(score));
    int error = errno;
    close(fd);
    errno = error;
    return n == (ssize_t)strlen(score) ? 0 : -1;
}

static void set_oom_score(const struct options *o)
{
    /* An isolated job's init is never the OOM killer's choice: the command
     * is (see confine_command). Lowering a score takes CAP_SYS_RESOURCE,
     * which some hosts' root lacks (EACCES): the init then keeps the
     * server's score, and is still far smaller than any command. A plain
     * job should not be the OOM killer's favourite because the server was
     * started with a low score, nor protected if it was high; an
     * unprivileged server may not lower it: not fatal. */
    if (o->isolate && write_oom_score("-1000") < 0 && errno != EACCES)
        fail("oom", errno);
    if (!o->isolate)
        (void)write_oom_score("0");
}

/* The job's view (see "View" above) */

static void mount_or_fail(const char *stage, const char *source,
                          const char *target, const char *type,
                          unsigned long flags, const char *data)
{
    if (mount(source, target, type, flags, data) < 0)
        fail(stage, errno);
}

static int set_mount_attributes(int dirfd, const char *path, unsigned int flags,
                                uint64_t set, uint64_t clear)
{
    struct mount_attributes attributes = {.attr_set = set, .attr_clr = clear};
    return (int)syscall(SYS_mount_setattr, dirfd, path, flags, &attributes,
                        sizeof attributes);
}

/* An O_PATH descriptor of PATH with no symlink anywhere on the way: the
 * server passes real paths, so a symlink there now is not the server's. */
static int open_real_path(const char *path)
{
    struct resolution how = {.flags = O_PATH | O_CLOEXEC,
                             .resolve = RESOLVE_NO_SYMLINKS};
    return (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
}

static void mask(const char *path)
{
    int fd = open_real_path(path);
    if (fd < 0 && errno == ENOENT)
        return; /* nothing to hide */
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        fail("mask", errno);
    /* Mounted on what was opened, not on a path looked up again. */
    char target[32];
    snprintf(target, sizeof target, "/proc/self/fd/%d", fd);
    if (S_ISDIR(st.st_mode))
        mount_or_fail("mask", "tmpfs", target, "tmpfs",
                      MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "mode=000,size=4k,nr_inodes=1");
    else
        mount_or_fail("mask", "/dev/null", target, NULL, MS_BIND, NULL);
    close(fd);
}

static void make_writable(const char *path)
{
    /* A copy of the (read-only) tree at PATH, its top mount writable, put
     * over PATH: all by descriptor, nothing looked up twice. */
    int fd = open_real_path(path);
    if (fd < 0)
        fail("writable", errno);
    int tree = (int)syscall(SYS_open_tree, fd, "",
                            AT_EMPTY_PATH | AT_RECURSIVE | OPEN_TREE_CLONE |
                                O_CLOEXEC);
    if (tree < 0 ||
        set_mount_attributes(tree, "", AT_EMPTY_PATH, 0, MOUNT_ATTR_RDONLY) < 0 ||
        syscall(SYS_move_mount, tree, "", fd, "",
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        fail("writable", errno);
    close(tree);
    close(fd);
}

static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("passwd", errno);
        data += n;
        len -= (size_t)n;
    }
}

/* FILE as the host has it, but the lines of user or group NAME, then
 * ENTRY, written to COPY. 0: the host has no FILE, nothing to cover. */
static int stage_entries(const char *file, const char *copy, const char *name,
                         const char *entry)
{
    int in = open(file, O_RDONLY | O_CLOEXEC);
    if (in < 0 && errno == ENOENT)
        return 0;
    if (in < 0)
        fail("passwd", errno);
    size_t size, kept = 0, name_length = strlen(name);
    char *host = read_all(in, "passwd", MAX_ENTRIES, &size);
    close(in);
    for (size_t at = 0; at < size;) {
        char *end = memchr(host + at, '\n', size - at);
        size_t length = end ? (size_t)(end - host) + 1 - at : size - at;
        if (!(length > name_length && host[at + name_length] == ':' &&
              memcmp(host + at, name, name_length) == 0)) {
            memmove(host + kept, host + at, length);
            kept += length;
        }
        at += length;
    }
    if (kept > 0 && host[kept - 1] != '\n')
        host[kept++] = '\n'; /* read_all leaves room for it */
    int out = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0)
        fail("passwd", errno);
    write_all(out, host, kept);
    write_all(out, entry, strlen(entry));
    if (close(out) < 0)
        fail("passwd", errno);
    free(host);
    return 1;
}

static void add_job_user(const struct options *o)
{
    /* Over the host's /dev, which the job's own (mount_own_dev) covers
     * next: like that one, no detach to wait for, and nothing covered can
     * be reached but through the binds. */
    char data[64], line[2200];
    snprintf(data, sizeof data, "mode=0755,size=%d,nr_inodes=8", 2 * MAX_ENTRIES);
    mount_or_fail("passwd", "tmpfs", "/dev", "tmpfs",
                  MS_NOSUID | MS_NODEV | MS_NOEXEC, data);
    const char *name = o->user_name;
    snprintf(line, sizeof line, "%s:x:%u:%u:%s:%s:%s\n", name,
             (unsigned int)o->uid, (unsigned int)o->gid, name, o->user_home,
             o->user_shell);
    int passwd = stage_entries("/etc/passwd", "/dev/passwd", name, line);
    snprintf(line, sizeof line, "%s:x:%u:\n", name, (unsigned int)o->gid);
    int group = stage_entries("/etc/group", "/dev/group", name, line);
    /* The superblock and its mount read-only: the binds copy the mount's
     * flags, and no path to the files can write them. */
    mount_or_fail("passwd", NULL, "/dev", NULL,
                  MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    if (passwd)
        mount_or_fail("passwd", "/dev/passwd", "/etc/passwd", NULL, MS_BIND, NULL);
    if (group)
        mount_or_fail("passwd", "/dev/group", "/etc/group", NULL, MS_BIND, NULL);
}

static void replace_mount(const char *type, const char *target, int detach)
{
    /* A fresh one over the host's: the job's PID namespace has a proc of
     * its own, its network namespace a sysfs of its own. What it covers
     * (the host's, and cgroupfs, debugfs... under it) no job process can
     * reach: none exists yet, and none may unmount. Detached first only
     * where the new one is the host's own superblock (sysfs, when the job
     * keeps the host's network), which the kernel will not mount on top
     * of itself: a detach waits for an RCU grace period (~0.08 ms).
     * EINVAL: nothing was mounted there. */
    if (detach && umount2(target, MNT_DETACH) < 0 && errno != EINVAL)
        fail("mount", errno);
    mount_or_fail("mount", type, target, type, MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  NULL);
}

static void read_only(const char *target)
{
    /* Per mount, not per superblock, which may be the host's own. */
    mount_or_fail("mount", NULL, target, NULL,
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV |
                      MS_NOEXEC,
                  NULL);
}

static void mount_own_views(const struct options *o)
{
    replace_mount("proc", "/proc", 0);
    replace_mount("sysfs", "/sys", o->host_network);
    /* Most kernel settings are the host's whatever the namespaces: a job
     * running as root must not change them. */
    mount_or_fail("mount", "/proc/sys", "/proc/sys", NULL, MS_BIND | MS_REC,
                  NULL);
    read_only("/proc/sys");
    read_only("/sys");
}

/* A tmpfs of the job's own on TARGET (skipped where the host has no such
 * directory); its pages are charged to the job's memory cgroup. */
static void private_tmpfs(const struct options *o, const char *stage,
                          const char *target, const char *mode)
{
    char data[96];
    snprintf(data, sizeof data, "mode=%s,size=%llu,nr_inodes=%lu", mode,
             o->tmpfs_size, o->tmpfs_inodes);
    if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, data) < 0 &&
        errno != ENOENT)
        fail(stage, errno);
}

static void mount_private_tmpfs(const struct options *o)
{
    private_tmpfs(o, "tmpfs", "/tmp", "1777");
    private_tmpfs(o, "tmpfs", "/var/tmp", "1777");
    private_tmpfs(o, "tmpfs", "/run", "0755");
    /* In the new /run (ENOENT: the host has none, nor do we). */
    if (mkdir("/run/lock", 0755) < 0 && errno != ENOENT)
        fail("tmpfs", errno);
    private_tmpfs(o, "tmpfs", "/run/lock", "1777");
}

static void mount_own_dev(const struct options *o)
{
    /* Made with mknod rather than bound from the host's /dev: one call
     * each and no mount each (we are root, bubblewrap need not be). */
    static const struct {
        const char *path;
        unsigned int major, minor;
    } nodes[] = {{"/dev/null", 1, 3},   {"/dev/zero", 1, 5},
                 {"/dev/full", 1, 7},   {"/dev/random", 1, 8},
                 {"/dev/urandom", 1, 9}, {"/dev/tty", 5, 0}};
    static const char *const links[][2] = {
        {"/proc/self/fd", "/dev/fd"},     {"/proc/self/fd/0", "/dev/stdin"},
        {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"},
        {"pts/ptmx", "/dev/ptmx"}};
    /* Over the host's /dev, not in its place: a detach would cost a wait for
     * an RCU grace period (~0.15 ms), and nothing covered can be reached.
     * Not nodev, unlike the rest: the nodes are here. */
    mount_or_fail("dev", "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC,
                  "mode=0755,size=64k,nr_inodes=64");
    for (size_t k = 0; k < sizeof nodes / sizeof nodes[0]; k++)
        if (mknod(nodes[k].path, S_IFCHR | 0666,
                  makedev(nodes[k].major, nodes[k].minor)) < 0)
            fail("dev", errno);
    for (size_t k = 0; k < sizeof links / sizeof links[0]; k++)
        if (symlink(links[k][0], links[k][1]) < 0)
            fail("dev", errno);
    if (mkdir("/dev/pts", 0755) < 0 || mkdir("/dev/shm", 0755) < 0)
        fail("dev", errno);
    mount_or_fail("dev", "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620");
    private_tmpfs(o, "dev", "/dev/shm", "1777");
    if (set_mount_attributes(AT_FDCWD, "/dev", 0, MOUNT_ATTR_RDONLY, 0) < 0)
        fail("dev", errno);
}

static void build_view(const struct options *o)
{
    mode_t umask_before = umask(0); /* the modes below are meant as written */
    /* Private first: with shared propagation, the mounts below would
     * appear on the host too. */
    mount_or_fail("mount", NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    /* Masks before the read-only step, which then covers them too, and
     * while the host's /dev/null is still there. */
    for (int k = 0; k < o->nmasks; k++)
        mask(o->masks[k]);
    /* nosuid changes nothing the command's no_new_privs does not already;
     * nodev: no device works but those of the job's own /dev (8). */
    if (set_mount_attributes(AT_FDCWD, "/", AT_RECURSIVE,
                             MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID |
                                 MOUNT_ATTR_NODEV,
                             0) < 0)
        fail("readonly", errno);
    /* Looked up before the private mounts below cover the host's paths. */
    for (int k = 0; k < o->nwritable; k++)
        make_writable(o->writable[k]);
    if (o->user_name != NULL)
        add_job_user(o);
    mount_own_views(o);
    mount_private_tmpfs(o);
    mount_own_dev(o);
    umask(umask_before);
}

static void bring_lo_up(void)
{
    /* A fresh network namespace has lo, down. An ioctl, not `ip`: the
     * helper needs no binary besides itself. */
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
        fail("lo", errno);
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
        fail("lo", errno);
    close(fd);
}

static void isolate(const struct options *o)
{
    if (getpid() != 1)
        fail("pidns", EINVAL);
    /* The cgroup namespace after the cgroups are joined: the job's own is
     * its root, "/" in /proc/self/cgroup. */
    int flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP;
    if (!o->host_network)
        flags |= CLONE_NEWNET;
    if (unshare(flags) < 0)
        fail("unshare", errno);
    build_view(o);
    if (sethostname(o->hostname, strlen(o->hostname)) < 0)
        fail("hostname", errno);
    if (!o->host_network)
        bring_lo_up();
}

/* The command's process, up to its exec */

/* Capabilities. Every job's command has none, root's too (a role's run_as
 * "root" is uid 0, not root's powers): no bounding, permitted, effective,
 * inheritable or ambient capability, and no way back. Uid 0 without them
 * still owns what root owns: it may write root's files where the job may
 * write at all (its private tmpfs, its role's writable paths), not others'
 * files, nor mount, chown, trace init (whose capabilities it lacks) or go
 * past a permission bit. The kernel exempts uid 0 from RLIMIT_NPROC: such
 * a job's bound on processes is its cgroup's pids limit alone.
 *
 * Before the uid changes, while the helper may (CAP_SETPCAP; a helper
 * that is not root has nothing to lock), the securebits, each locked:
 *   NOROOT on: uid 0 gets no capabilities from an exec (the empty
 *     bounding set below says the same; this does not rest on it);
 *   NO_SETUID_FIXUP off: the kernel's clearing of capabilities when a
 *     uid leaves 0 stays, and no one can turn it off (as root would, to
 *     keep them over a setuid);
 *   KEEP_CAPS off: likewise, nothing is kept over a setuid;
 *   NO_CAP_AMBIENT_RAISE on: no ambient capability, ever.
 * Then every capability out of the bounding set, up to the kernel's last
 * (the first one it does not know is EINVAL). */
static void lock_out_capabilities(void)
{
    unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED |
                         SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                         SECBIT_NO_CAP_AMBIENT_RAISE |
                         SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) < 0)
        fail("caps", errno);
    for (unsigned long cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0)
            continue;
        if (errno == EINVAL && cap > 0)
            break;
        fail("caps", errno);
    }
}

/* After the uid changes: what is left goes, the inheritable set with it
 * (no setuid clears that one), and with uid 0 everything (for uid 0,
 * setuid(0) clears nothing). */
static void clear_capabilities(void)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3];
    memset(none, 0, sizeof none);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 ||
        syscall(SYS_capset, &header, none) < 0)
        fail("caps", errno);
}

static void drop_privileges(const struct options *o)
{
    if (geteuid() == 0)
        lock_out_capabilities();
    if (o->given_uid) {
        /* Groups first: once the uid is not 0, they can no longer change. */
        if (setgroups(o->ngroups, o->groups) < 0)
            fail("setgroups", errno);
        if (setgid(o->gid) < 0)
            fail("setgid", errno);
        if (setuid(o->uid) < 0) /* as root: real, effective and saved */
            fail("setuid", errno);
    }
    clear_capabilities();
    /* No setuid binary or file capability may give anything back. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail("prctl", errno);
}

static const char *search_path(char *const *env)
{
    for (; *env != NULL; env++)
        if (strncmp(*env, "PATH=", 5) == 0)
            return *env + 5;
    return DEFAULT_PATH;
}

/* execve FILE, looked up on the job's PATH if it has no slash, as execvp
 * would but on the environment given rather than our own. A directory that
 * does not hold it (or cannot be searched) is passed over; EACCES is told
 * if nothing better was found. */
static void exec_file(const char *file, char *const *argv, char *const *env)
{
    if (strchr(file, '/') != NULL) {
        execve(file, argv, env);
        fail("exec", errno);
    }
    size_t file_length = strlen(file);
    int error = ENOENT;
    char candidate[PATH_MAX];
    const char *directory = search_path(env);
    for (;;) {
        const char *end = strchrnul(directory, ':');
        size_t length = (size_t)(end - directory);
        const char *prefix = length ? directory : "."; /* "" is the cwd */
        length = length ? length : 1;
        if (length + 1 + file_length < sizeof candidate) {
            memcpy(candidate, prefix, length);
            candidate[length] = '/';
            memcpy(candidate + length + 1, file, file_length + 1);
            execve(candidate, argv, env);
            if (errno == EACCES)
                error = EACCES;
            else if (errno != ENOENT && errno != ENOTDIR)
                fail("exec", errno); /* found, but it cannot run */
        }
        if (*end == '\0')
            break;
        directory = end + 1;
    }
    fail("exec", error);
}

/* After it, the command's process can make only the calls it allows: the
 * last step before the exec, which it allows. NO_NEW_PRIVS too (the kernel
 * wants it of a process without CAP_SYS_ADMIN), whatever the user. */
static void load_seccomp_filter(const struct options *o)
{
    if (o->seccomp.len == 0)
        return;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail("seccomp", errno);
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0U, &o->seccomp) < 0)
        fail("seccomp", errno);
}

/* An isolated command's OOM score and limits (see "Command" above), set
 * as root: the score 0 is also the floor the job cannot go below. No limit
 * goes above the server's own hard limit: raising one would take
 * CAP_SYS_RESOURCE, and a host that set it lower meant it. */
static void confine_command(void)
{
    static const struct {
        int resource;
        rlim_t soft, hard;
    } limits[] = {{RLIMIT_NOFILE, NOFILE_SOFT, NOFILE_HARD},
                  {RLIMIT_CORE, 0, 0},
                  {RLIMIT_NPROC, NPROC_LIMIT, NPROC_LIMIT}};
    if (write_oom_score("0") < 0)
        fail("oom", errno);
    for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
        struct rlimit limit;
        if (getrlimit(limits[k].resource, &limit) < 0)
            fail("rlimit", errno);
        if (limit.rlim_max > limits[k].hard)
            limit.rlim_max = limits[k].hard;
        limit.rlim_cur = limits[k].soft < limit.rlim_max ? limits[k].soft
                                                          : limit.rlim_max;
        if (setrlimit(limits[k].resource, &limit) < 0)
            fail("rlimit", errno);
    }
}

/* The command's last steps: after these only its execve. A system call
 * filter, if any, loads right before exec_file: once privileges are gone
 * (no_new_privs lets it), and after every call of the setup. */
static void exec_command(const struct options *o)
{
    if (o->isolate)
        confine_command();
    drop_privileges(o); /* every job's: see "Capabilities" */
    const char *cwd = o->cwd ? o->cwd : o->isolate ? "/tmp" : "/";
    if (chdir(cwd) < 0)
        fail("chdir", errno);

    /* posix_spawn reset ignored signals; init blocked the rest: unblock. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    load_seccomp_filter(o);
    exec_file(o->command[0], &o->command[1], o->env);
}

/* Init */

static void watched_signals(sigset_t *set)
{
    /* All but those init cannot take (KILL, STOP), those that would mean
     * init itself faulted, and PIPE (a server gone away is not the job's
     * business). CHLD is init's own; the others go to the command. */
    static const int not_watched[] = {SIGKILL, SIGSTOP, SIGSEGV, SIGBUS,
                                      SIGFPE,  SIGILL,  SIGTRAP, SIGSYS,
                                      SIGPIPE};
    sigfillset(set);
    for (size_t k = 0; k < sizeof not_watched / sizeof not_watched[0]; k++)
        sigdelset(set, not_watched[k]);
}

static void confirm_exec(int fd)
{
    /* The pipe is close-on-exec in the command's process: end of file with
     * nothing read means its exec succeeded; otherwise it carries the
     * error line, which is the job's outcome. */
    char line[128];
    size_t len = 0;
    while (len < sizeof line - 1) {
        ssize_t n = read(fd, line + len, sizeof line - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (len > 0) {
        line[len] = '\0';
        report(line);
        _exit(127);
    }
    report("running\n");
}

/* Kill and reap every other process of the namespace: once init is gone,
 * none is left (see "Init"). Those reparented to init while this runs are
 * its children too; ECHILD means there are none. */
static void end_the_job(void)
{
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
        ;
}

static void finish(int status)
{
    char line[32];
    end_the_job();
    if (WIFSIGNALED(status)) {
        snprintf(line, sizeof line, "signal %d\n", WTERMSIG(status));
        report(line);
        /* The same signal would not kill PID 1: say it the shell's way. */
        _exit(128 + WTERMSIG(status));
    }
    snprintf(line, sizeof line, "exit %d\n", WEXITSTATUS(status));
    report(line);
    _exit(WEXITSTATUS(status));
}

static void reap(pid_t command)
{
    /* Every child, orphans included; one SIGCHLD may stand for many. */
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        if (pid == command)
            finish(status);
}

static void supervise(pid_t command, const sigset_t *watched)
{
    for (;;) {
        int sig = sigwaitinfo(watched, NULL);
        if (sig == SIGCHLD)
            reap(command);
        else if (sig > 0)
            kill(command, sig);
    }
}

static void run_as_init(const struct options *o)
{
    sigset_t watched;
    watched_signals(&watched);
    /* Blocked before the fork: a signal sent meanwhile (a stop at once)
     * waits for the loop below, which forwards it, instead of being lost.
     * CHLD at its default, never ignored: that would discard the statuses. */
    sigprocmask(SIG_BLOCK, &watched, NULL);
    signal(SIGCHLD, SIG_DFL);

    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        fail("pipe", errno);
    pid_t command = fork();
    if (command < 0)
        fail("fork", errno);
    if (command == 0) {
        close(pipefd[0]);
        close(status_fd);
        status_fd = pipefd[1];
        exec_command(o);
    }
    signal(SIGPIPE, SIG_IGN);
    close(pipefd[1]);
    confirm_exec(pipefd[0]);
    /* The job's pipes should close when its last process ends, not when
     * init does. */
    close(0);
    close(1);
    close(2);
    supervise(command, &watched);
}

/* Close the descriptors from `from` up to just before `to`. */
static int close_between(int from, int to)
{
    if (from >= to)
        return 1;
    return syscall(SYS_close_range, (unsigned int)from, (unsigned int)to - 1,
                   0U) == 0;
}

/* Close every descriptor but stdin, stdout, stderr, the status fd and the
 * held one. The server leaves this to us rather than list its own open
 * descriptors at every spawn (thousands of them, with many jobs running). */
static void close_inherited(const struct options *o)
{
    /* The gaps around the kept descriptors above stderr, in order. */
    int kept[2] = {status_fd, o->hold_fd};
    if (kept[0] > kept[1]) {
        kept[0] = o->hold_fd;
        kept[1] = status_fd;
    }
    int ok = 1, from = 3;
    for (int k = 0; k < 2 && ok; k++) {
        if (kept[k] < 3)
            continue;
        ok = close_between(from, kept[k]);
        from = kept[k] + 1;
    }
    if (ok && syscall(SYS_close_range, (unsigned int)from, ~0U, 0U) == 0)
        return;
    /* A kernel without close_range (before 5.9): walk /proc/self/fd. */
    DIR *fds = opendir("/proc/self/fd");
    if (fds == NULL)
        fail("close", errno);
    struct dirent *entry;
    while ((entry = readdir(fds)) != NULL) {
        int fd = atoi(entry->d_name);
        if (fd > 2 && fd != status_fd && fd != o->hold_fd && fd != dirfd(fds))
            close(fd);
    }
    closedir(fds);
}

int main(int argc, char **argv)
{
    struct options o;
    memset(&o, 0, sizeof o);
    parse_options(&o, argc, argv);
    if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) < 0)
        usage();
    if (o.hold_fd >= 0 && fcntl(o.hold_fd, F_SETFD, FD_CLOEXEC) < 0)
        usage();
    close_inherited(&o);

    join_cgroups(&o);

    /* Own session and process group: stop signals the whole group. The
     * command stays in it, under init too. */
    if (setsid() < 0)
        fail("setsid", errno);
    set_oom_score(&o);

    if (o.isolate)
        isolate(&o);
    read_go_ahead(&o);
    if (o.isolate)
        run_as_init(&o);
    exec_command(&o);
    return 127;
}
