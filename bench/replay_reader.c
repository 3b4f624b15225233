/*
 * The lean reader of a journal replay (bench/bench_journal.py): subscribes with one NDJSON
 * request (docs/protocol.md, "Resuming: since") and reads the replayed frames as fast as the
 * socket gives them, checking that each is an event frame with a seq above the last.
 *
 *   usage: replay_reader SOCKET REQUEST FRAMES
 *
 * Prints "<ns from the request to the last frame> <frames> <bytes>" and exits 0 once FRAMES
 * frames arrived; exits 2 (a message on stderr) if the reply is not ok, a line is not an
 * event frame, seqs go back, or the daemon closes first.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF (1 << 20)
#define SEQ_KEY "{\"seq\": "

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, const char *line, size_t len)
{
	fprintf(stderr, "replay_reader: %s: %.*s\n", what, (int)(len > 200 ? 200 : len), line);
	exit(2);
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	unsigned long long want, frames = 0, bytes = 0, last = 0;
	int replied = 0, fd;
	size_t len = 0;
	uint64_t t0;
	char *buf;

	if (argc != 4) {
		fprintf(stderr, "usage: replay_reader SOCKET REQUEST FRAMES\n");
		return 1;
	}
	want = strtoull(argv[3], NULL, 10);
	buf = malloc(BUF);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	strncpy(addr.sun_path, argv[1], sizeof(addr.sun_path) - 1);
	if (!buf || fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("replay_reader: connect");
		return 2;
	}
	t0 = now_ns();
	if (dprintf(fd, "%s\n", argv[2]) < 0) {
		perror("replay_reader: write");
		return 2;
	}
	while (frames < want) {
		ssize_t got = read(fd, buf + len, BUF - len);
		size_t start = 0;
		char *nl;

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			die("the daemon closed the connection", "", 0);
		len += (size_t)got;
		bytes += (size_t)got;
		while ((nl = memchr(buf + start, '\n', len - start)) != NULL) {
			char *line = buf + start;
			size_t n = (size_t)(nl - line);

			if (!replied) {
				if (!memmem(line, n, "\"ok\": true", 10))
					die("the subscribe was refused", line, n);
				replied = 1;
			} else {
				unsigned long long seq;

				if (n < sizeof(SEQ_KEY) || memcmp(line, SEQ_KEY, sizeof(SEQ_KEY) - 1))
					die("not an event frame", line, n);
				seq = strtoull(line + sizeof(SEQ_KEY) - 1, NULL, 10);
				if (seq <= last)
					die("a seq at or below the one before", line, n);
				last = seq;
				frames++;
			}
			start = (size_t)(nl - buf) + 1;
		}
		memmove(buf, buf + start, len - start);
		len -= start;
		if (len == BUF)
			die("a line over 1 MiB", buf, len);
	}
	printf("%llu %llu %llu\n", (unsigned long long)(now_ns() - t0), frames, bytes);
	return 0;
}
