/* The hook fork server of webhook-sidecar: a small process that forks and execs hooks for the sidecar.
 *
 * Why: a Python process that starts a hook pays for subprocess.Popen's Python code and, to give each hook
 * a Landlock domain of its own, for a thread per spawn. This process is small and single-threaded: it
 * vforks itself (no copy of anything), and the child puts itself in its own session, takes its descriptors, drops every
 * capability, sets no_new_privs, enters the route's Landlock ruleset (a domain of its own: it can signal
 * neither this process nor another hook) and execs. It only starts and reaps: the sidecar feeds the hook,
 * reads its output, ends it at its deadline and tracks what it leaves behind (sidecar/forkserver.py).
 *
 * Protocol (AF_UNIX SOCK_SEQPACKET). argv[1] is the control socket: each message on it carries one new
 * connection (SCM_RIGHTS); its end (EOF) ends this process. On a connection, a request is one message:
 *   u32 version (1), u32 flags, u32 argc, u32 envc, u32 cwd_len, then argc + envc (+1 with a cwd)
 *   NUL-terminated strings; its descriptors (SCM_RIGHTS): stdin, output, [stdout], [ruleset].
 * The answer is i32 kind (1), i32 pid, i32 errno (pid 0: not started, errno why); once that pid has
 * exited and is reaped, i32 kind (2), i32 pid, i32 wait status follows on the same connection.
 *
 * Build: cc -O2 -Wall -o sidecar/native/forkserver sidecar/native/forkserver.c (make native).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

enum { F_SANDBOX = 1, F_RULESET = 2, F_STDOUT = 4 };
enum { K_STARTED = 1, K_EXITED = 2 };
#define MAX_MSG (1 << 20)
#define MAX_FDS 4
#define MAX_RUNS 4096

struct header { uint32_t version, flags, argc, envc, cwd_len; };
struct answer { int32_t kind, pid, value; };
struct run { pid_t pid; int conn; };

static char msg[MAX_MSG];
static struct run runs[MAX_RUNS];
static int nruns;

static void answer(int conn, int32_t kind, int32_t pid, int32_t value) {
    struct answer a = {kind, pid, value};
    if (conn >= 0)
        send(conn, &a, sizeof a, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* The child's side (of a vfork: it shares our memory until its exec, and only sets `failed`): never
 * returns. A failure leaves errno in `failed` and exits 127. */
static volatile int failed;

static void child(char **argv, char **envp, const char *cwd, const int *fds, uint32_t flags) {
    sigset_t none;
    int stdin_fd = fds[0], output = fds[1], out = (flags & F_STDOUT) ? fds[2] : output;
    int ruleset = (flags & F_RULESET) ? fds[(flags & F_STDOUT) ? 3 : 2] : -1;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setsid() < 0 || dup2(stdin_fd, 0) < 0 || dup2(out, 1) < 0 || dup2(output, 2) < 0)
        goto fail;
    if (cwd && chdir(cwd) < 0)
        goto fail;
    if (flags & F_SANDBOX) {
        struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof data);
        for (int cap = 0; cap < 64; cap++)  /* EINVAL past the last, EPERM without CAP_SETPCAP: done */
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
                break;
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        if (syscall(SYS_capset, &head, data) < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            goto fail;
        if (ruleset >= 0 && syscall(SYS_landlock_restrict_self, ruleset, 0) < 0)
            goto fail;
    }
    /* Nothing of this process's reaches the hook: every descriptor above 2 closes at the exec. */
    if (syscall(SYS_close_range, 3, UINT_MAX, CLOSE_RANGE_CLOEXEC) < 0)
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
    } else {  /* looked up in the hook's own PATH, as subprocess does */
        const char *path = "/bin:/usr/bin";
        int seen = ENOENT;
        for (char **e = envp; *e; e++)
            if (strncmp(*e, "PATH=", 5) == 0)
                path = *e + 5;
        size_t name = strlen(argv[0]);
        for (const char *p = path;; p++) {
            const char *end = strchrnul(p, ':');
            size_t dir = (size_t)(end - p);
            char full[PATH_MAX];
            if (dir + 1 + name < sizeof full) {  /* dir/name, or name alone for an empty entry */
                memcpy(full, p, dir);
                size_t at = dir;
                if (dir)
                    full[at++] = '/';
                memcpy(full + at, argv[0], name + 1);
                execve(full, argv, envp);
                if (errno != ENOENT && errno != ENOTDIR)
                    seen = errno;
            }
            if (!*end)
                break;
            p = end;
        }
        errno = seen;
    }
fail:
    failed = errno;
    _exit(127);
}

static int spawn(char **argv, char **envp, const char *cwd, const int *fds, uint32_t flags, int *err) {
    failed = 0;
    pid_t pid = vfork();  /* this process waits until the child has exec'd or failed */
    if (pid == 0)
        child(argv, envp, cwd, fds, flags);
    if (pid < 0) {
        *err = errno;
        return 0;
    }
    if (failed) {  /* it never ran the hook */
        waitpid(pid, NULL, 0);
        *err = failed;
        return 0;
    }
    return pid;
}

static char **strings(char **at, char *end, uint32_t count) {
    char **list = calloc(count + 1, sizeof *list);
    for (uint32_t i = 0; list && i < count; i++) {
        char *nul = *at < end ? memchr(*at, 0, end - *at) : NULL;
        if (!nul) {
            free(list);
            return NULL;
        }
        list[i] = *at;
        *at = nul + 1;
    }
    return list;
}

/* One request on `conn`; 0 when the connection ended. */
static int request(int conn) {
    int fds[MAX_FDS], nfds = 0, err = EINVAL, pid = 0;
    union { char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)]; struct cmsghdr align; } control;
    struct iovec iov = {msg, sizeof msg};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                       .msg_controllen = sizeof control.buf};
    ssize_t n = recvmsg(conn, &m, MSG_CMSG_CLOEXEC);
    if (n <= 0)
        return n < 0 && (errno == EINTR || errno == EAGAIN);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (int i = 0; i < count && nfds < MAX_FDS; i++)
                memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    struct header h;
    if (!(m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) && (size_t)n >= sizeof h) {
        memcpy(&h, msg, sizeof h);
        int want = 2 + !!(h.flags & F_STDOUT) + !!(h.flags & F_RULESET);
        char *at = msg + sizeof h, *end = msg + n;
        char **argv = NULL, **envp = NULL;
        if (h.version == 1 && nfds == want && h.argc > 0 && h.argc < 65536 && h.envc < 65536 &&
            (argv = strings(&at, end, h.argc)) && (envp = strings(&at, end, h.envc))) {
            const char *cwd = NULL;
            if (h.cwd_len) {
                char **dir = strings(&at, end, 1);
                cwd = dir ? dir[0] : NULL;
                free(dir);
            }
            if (!h.cwd_len || cwd)
                pid = spawn(argv, envp, cwd, fds, h.flags, &err);
        }
        free(argv);
        free(envp);
    }
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (pid > 0 && nruns < MAX_RUNS)
        runs[nruns++] = (struct run){pid, conn};
    answer(conn, K_STARTED, pid, pid > 0 ? 0 : err);
    return 1;
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < nruns; i++)
            if (runs[i].pid == pid) {
                answer(runs[i].conn, K_EXITED, pid, status);
                runs[i] = runs[--nruns];
                break;
            }
}

static void forget(int conn) {
    for (int i = 0; i < nruns; i++)
        if (runs[i].conn == conn)
            runs[i].conn = -1;  /* still reaped when it exits; nobody to tell */
    close(conn);
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    int ctl = atoi(argv[1]);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);  /* as the sidecar: no ptrace of it, no /proc/<pid>/environ by its uid */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || ep < 0)
        return 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ctl};
    epoll_ctl(ep, EPOLL_CTL_ADD, ctl, &ev);
    ev.data.fd = sfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    const char ready = 'R';
    if (send(ctl, &ready, 1, MSG_NOSIGNAL) != 1)
        return 1;
    for (;;) {
        struct epoll_event events[64];
        int n = epoll_wait(ep, events, 64, -1);
        if (n < 0 && errno != EINTR)
            return 1;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == sfd) {
                struct signalfd_siginfo info;
                while (read(sfd, &info, sizeof info) == sizeof info)
                    ;
                reap();
            } else if (fd == ctl) {
                int conn = -1;
                char byte;
                union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
                struct iovec iov = {&byte, 1};
                struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                                   .msg_controllen = sizeof control.buf};
                ssize_t got = recvmsg(ctl, &m, MSG_CMSG_CLOEXEC);
                if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
                    return 0;  /* the sidecar is gone, or done with us */
                struct cmsghdr *c = CMSG_FIRSTHDR(&m);
                if (c && c->cmsg_type == SCM_RIGHTS)
                    memcpy(&conn, CMSG_DATA(c), sizeof conn);
                struct epoll_event add = {.events = EPOLLIN, .data.fd = conn};
                if (conn >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, conn, &add) < 0)
                    close(conn);
            } else if (!request(fd)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                forget(fd);
            }
        }
    }
}
