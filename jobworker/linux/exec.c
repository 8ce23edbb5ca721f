/*
 * jobworker-exec: what a job's process does between spawn and exec.
 *
 * The server spawns this small program (through posix_spawn, whose cost does
 * not grow with the server's memory) instead of the job's command. It puts
 * the process where the job belongs, then execs the command, so that the
 * command's first instruction already runs there.
 *
 *   jobworker-exec [--cwd DIR] [--status-fd N] -- PATH ARGV0 [ARG...]
 *
 * Status protocol on fd N (default 3), one line per event:
 *   "error <stage> <errno>\n"  setup or exec failed; the job never ran
 * A successful exec closes fd N (it is close-on-exec) without a line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

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
            "usage: jobworker-exec [--cwd DIR] [--status-fd N] -- PATH ARGV0 [ARG...]\n");
    _exit(127);
}

int main(int argc, char **argv)
{
    const char *cwd = NULL;
    int i = 1;

    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strcmp(argv[i], "--cwd") == 0 && i + 1 < argc) {
            cwd = argv[++i];
        } else if (strcmp(argv[i], "--status-fd") == 0 && i + 1 < argc) {
            status_fd = atoi(argv[++i]);
        } else {
            usage();
        }
    }
    if (argc - i < 2)
        usage();
    if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) < 0)
        usage();

    /* Own session and process group: stop signals the whole group. */
    if (setsid() < 0)
        fail("setsid", errno);

    /* A job should not be the OOM killer's favourite because the server
     * was started with a low score, nor protected if it was high. */
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "0", 1) < 0) {
            /* unprivileged servers may not lower it; not fatal */
        }
        close(fd);
    }

    if (cwd != NULL && chdir(cwd) < 0)
        fail("chdir", errno);

    /* posix_spawn reset ignored signals; also unblock everything. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    execve(argv[i], &argv[i + 1], environ);
    fail("exec", errno);
    return 127;
}
