/* A real C client for rst-trace's application-error tests: it makes one socket call fail the
 * way a dead connection makes it fail, on a worker thread named "c-worker" of a process named
 * "rstt-capp", and prints what it saw.
 *
 * Usage: apperr_client MODE ADDR PORT   (ADDR: IPv4 or IPv6 literal)
 *   recv       connect, send 256 bytes, print "sent", wait for a line on stdin, read()
 *   write      connect, read until EOF (the peer's FIN: CLOSE_WAIT), print "eof", wait for a
 *              line, send() with MSG_NOSIGNAL
 *   connect    blocking connect()
 *   nbconnect  non-blocking connect(), poll() for POLLOUT, getsockopt(SOL_SOCKET, SO_ERROR)
 * Prints "pid N" first, and "fail CALL fd FD tid TID errno NAME" for the failing call (or
 * "ok ..." when it did not fail).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *mode;
static struct sockaddr_storage addr;
static socklen_t addrlen;

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void wait_go(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        exit(3);
}

static const char *ename(int e) {
    switch (e) {
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ETIMEDOUT: return "ETIMEDOUT";
    case 0: return "none";
    default: return "other";
    }
}

static void result(const char *call, int fd, long rc, int err) {
    say("%s %s fd %d tid %ld errno %s", rc < 0 ? "fail" : "ok", call, fd,
        (long)syscall(SYS_gettid), rc < 0 ? ename(err) : "none");
}

static int connected(void) {
    int fd = socket(addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, addrlen) != 0) {
        perror("connect");
        exit(2);
    }
    return fd;
}

static void *worker(void *arg) {
    (void)arg;
    char buf[256];
    prctl(PR_SET_NAME, "c-worker", 0, 0, 0);
    if (!strcmp(mode, "recv")) {
        int fd = connected();
        memset(buf, 'x', sizeof buf);
        if (send(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf)
            exit(2);
        say("sent");
        wait_go();
        long rc = read(fd, buf, 100);
        result("read", fd, rc, errno);
    } else if (!strcmp(mode, "write")) {
        int fd = connected();
        while (read(fd, buf, sizeof buf) > 0)
            ;
        say("eof");
        wait_go();
        long rc = send(fd, "x", 1, MSG_NOSIGNAL);
        result("sendto", fd, rc, errno);
    } else if (!strcmp(mode, "connect")) {
        int fd = socket(addr.ss_family, SOCK_STREAM, 0);
        long rc = connect(fd, (struct sockaddr *)&addr, addrlen);
        result("connect", fd, rc, errno);
    } else if (!strcmp(mode, "nbconnect")) {
        int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (connect(fd, (struct sockaddr *)&addr, addrlen) == 0 || errno != EINPROGRESS) {
            say("connect did not start: %s", strerror(errno));
            exit(2);
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, 5000);
        int err = 0;
        socklen_t len = sizeof err;
        long rc = getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        /* The call succeeds; the connect's error is its value. */
        result("getsockopt", fd, rc == 0 && err ? -1 : rc, err);
    } else {
        say("unknown mode %s", mode);
        exit(2);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    mode = argv[1];
    int port = atoi(argv[3]);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, argv[2], &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, argv[2], &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        addrlen = sizeof *a6;
    } else {
        return 2;
    }
    prctl(PR_SET_NAME, "rstt-capp", 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    say("pid %d", getpid());
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_join(t, NULL);
    return 0;
}
