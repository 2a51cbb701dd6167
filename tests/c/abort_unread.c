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
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
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

int main(int argc, char **argv)
{
	struct sockaddr_in a;
	int lfd, one = 1;

	if (argc != 3)
		return 2;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (strcmp(argv[2], "client") == 0)
		return client(&a);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 1)) {
		perror("listen");
		return 1;
	}
	printf("listening\n");
	fflush(stdout);
	abort_with_unread_data(lfd, strcmp(argv[2], "exit") == 0);
	printf("closed\n");
	fflush(stdout);
	/* Still running when rst-trace symbolizes the stack: it needs the process's mappings. */
	sleep(2);
	return 0;
}
