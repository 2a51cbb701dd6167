/*
 * tests/tests/stacks.rs: a server that aborts a connection from a function the test names.
 * Built at test time with `cc -O0 -g -fno-omit-frame-pointer`.
 *
 * usage: abort_unread PORT close|exit
 *   listens on 127.0.0.1:PORT, prints "listening", accepts one connection, waits until 256
 *   bytes are unread, then in abort_with_unread_data() either close()s the socket (the kernel
 *   resets the connection) or exits with it open (the process's exit closes it: no user stack
 *   left). Prints "closed" after a close.
 */
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

int main(int argc, char **argv)
{
	struct sockaddr_in a;
	int lfd, one = 1;

	if (argc != 3)
		return 2;
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[1]));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
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
