/*
 * tests/tests/stacks.rs: a server that aborts a connection from a function the test names.
 * Built at test time with `cc -O0 -g -fno-omit-frame-pointer`.
 *
 * usage: abort_unread PORT close|exit
 *   listens on 127.0.0.1:PORT, prints "listening", accepts one connection, waits until 256
 *   bytes are unread, then in abort_with_unread_data() either close()s the socket (the kernel
 *   resets the connection) or exits with it open (the process's exit closes it: no user stack
 *   left). Prints "closed" after a close.
 * usage: abort_unread PORT client
 *   prints "pid N", connects to 127.0.0.1:PORT, sends 256 bytes, prints "sent", then in read_after_reset()
 *   blocks in read() until the server's reset makes it fail; prints "errno NAME" (ECONNRESET).
 *   Single-threaded: libc's read() then keeps no frame (see tests/tests/stacks.rs).
 * usage: abort_unread PORT storm N
 *   prints "listening", then forks a client that makes N connections one after another, each
 *   sending 1 byte and reading until the reset; the server closes each with the byte unread
 *   from nest() at a recursion depth, under one of eight callers, that the client's port
 *   decides (storm_depth(), storm_via()): 256 distinct user stacks, enough for some to share a
 *   stack map bucket, and the test can tell whose stack each reset was given. Exits when its
 *   stdin closes. Prints "stormed N" once the client is done.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void abort_with_unread_data(int lfd, int on_exit)
{
	int fd = accept(lfd, NULL, NULL);
	int unread = 0;

	while (unread < 256) {
		usleep(1000);
		if (ioctl(fd, FIONREAD, &unread) < 0) {
			perror("FIONREAD");
			exit(1);
		}
	}
	if (on_exit)
		_exit(0); /* EXIT */
	close(fd); /* ABORT */
}

static void read_after_reset(int fd)
{
	char buf[64];
	ssize_t n = read(fd, buf, sizeof(buf)); /* READ */

	if (n < 0 && errno == ECONNRESET)
		printf("errno ECONNRESET\n");
	else
		printf("read %zd errno %d\n", n, n < 0 ? errno : 0);
	fflush(stdout);
}

static int client(struct sockaddr_in *a)
{
	char data[256];
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	/* The test harness's protocol (Peer::from_command): its own pid first. */
	printf("pid %d\n", (int)getpid());
	fflush(stdout);
	if (connect(fd, (struct sockaddr *)a, sizeof(*a))) {
		perror("connect");
		return 1;
	}
	memset(data, 'x', sizeof(data));
	if (write(fd, data, sizeof(data)) != sizeof(data)) {
		perror("write");
		return 1;
	}
	printf("sent\n");
	fflush(stdout);
	read_after_reset(fd);
	/* Still running when rst-trace symbolizes the stack. */
	sleep(2);
	return 0;
}

/* Must match storm_depth() and storm_via() in tests/tests/stacks.rs. */
static int storm_depth(int port)
{
	return (port % 32) * 2;
}

static int storm_via(int port)
{
	return (port / 32) % 8;
}

/* close(fd) from `depth` frames of nest() below the caller: depth + 1 nest frames. */
static __attribute__((noinline)) int nest(int fd, int depth)
{
	volatile int keep = depth;

	if (depth == 0)
		return close(fd);
	return nest(fd, depth - 1) + keep * 0;
}

/* Eight callers of nest(), one frame each: with the depths, 256 distinct user stacks. */
#define VIA(n) \
	static __attribute__((noinline)) int via##n(int fd, int depth) \
	{ \
		volatile int keep = n; \
		return nest(fd, depth) + keep * 0; \
	}
VIA(0) VIA(1) VIA(2) VIA(3) VIA(4) VIA(5) VIA(6) VIA(7)
static int (*const vias[8])(int, int) = { via0, via1, via2, via3, via4, via5, via6, via7 };

static int storm(int lfd, struct sockaddr_in *a, int n)
{
	pid_t child = fork();
	int i, status;

	if (child == 0) {
		for (i = 0; i < n; i++) {
			char b;
			int fd = socket(AF_INET, SOCK_STREAM, 0);

			if (connect(fd, (struct sockaddr *)a, sizeof(*a)) || write(fd, "x", 1) != 1)
				_exit(1);
			(void)!read(fd, &b, 1);
			close(fd);
		}
		_exit(0);
	}
	for (i = 0; i < n; i++) {
		struct sockaddr_in peer;
		socklen_t len = sizeof(peer);
		int fd = accept(lfd, (struct sockaddr *)&peer, &len);
		struct pollfd p = { .fd = fd, .events = POLLIN };

		if (fd < 0 || poll(&p, 1, 5000) != 1)
			return 1;
		vias[storm_via(ntohs(peer.sin_port))](fd, storm_depth(ntohs(peer.sin_port)));
	}
	if (waitpid(child, &status, 0) != child || status != 0)
		return 1;
	printf("stormed %d\n", n);
	fflush(stdout);
	/* Still running while rst-trace symbolizes the stacks (slowly, in an emulated guest): until
	 * the test closes stdin. */
	while (getchar() != EOF)
		;
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a;
	int lfd, one = 1;

	if (argc != 3 && !(argc == 4 && strcmp(argv[2], "storm") == 0))
		return 2;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (strcmp(argv[2], "client") == 0)
		return client(&a);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 64)) {
		perror("listen");
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	if (argc == 4)
		return storm(lfd, &a, atoi(argv[3]));
	abort_with_unread_data(lfd, strcmp(argv[2], "exit") == 0);
	printf("closed\n");
	fflush(stdout);
	/* Still running when rst-trace symbolizes the stack: it needs the process's mappings. */
	sleep(2);
	return 0;
}
