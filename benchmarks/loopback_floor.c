// The loopback floor of this machine: what a request/response round trip
// over TCP on 127.0.0.1 costs with no framework, no protocol and no work,
// from each request's actual send and from its intended send time (the
// latter as an open-loop client that sleeps until each send time sees it,
// like `keel bench`, except that this one keeps one request outstanding and
// has no warm-up). A server thread echoes SIZE-byte messages on a blocking
// socket; the client sends RATE per second on a fixed timetable (timer slack
// 1 ns) and waits for each echo before the next. Percentiles are nearest-rank.
//
//   cc -O2 -pthread -o /tmp/loopback_floor benchmarks/loopback_floor.c -lm
//   /tmp/loopback_floor SIZE RATE COUNT      (e.g. 15000 5000 50000)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long size;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

// 0 when all n bytes were read; -1 at end of stream or on an error (errno then set).
static int read_all(int fd, char *buffer, long n) {
    for (long got = 0; got < n;) {
        ssize_t r = read(fd, buffer + got, (size_t)(n - got));
        if (r == 0) errno = ECONNRESET;
        if (r <= 0) return -1;
        got += r;
    }
    return 0;
}

static int write_all(int fd, const char *buffer, long n) {
    for (long put = 0; put < n;) {
        ssize_t w = write(fd, buffer + put, (size_t)(n - put));
        if (w <= 0) return -1;
        put += w;
    }
    return 0;
}

static void *echo(void *arg) {
    int listener = *(int *)arg, one = 1;
    int fd = accept(listener, NULL, NULL);
    if (fd < 0) return NULL;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char *buffer = malloc((size_t)size);
    while (buffer && read_all(fd, buffer, size) == 0 && write_all(fd, buffer, size) == 0) {}
    free(buffer);
    close(fd);
    return NULL;
}

static int by_value(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

// The nearest-rank percentile q (0 < q <= 1) of n sorted values.
static double percentile_us(const long *sorted, long n, double q) {
    long rank = (long)ceil(q * (double)n);
    return sorted[rank < 1 ? 0 : rank - 1] / 1e3;
}

static void report(const char *what, long *ns, long n) {
    qsort(ns, (size_t)n, sizeof *ns, by_value);
    printf("%-28s p50 %7.1f us  p99 %7.1f us  p99.9 %7.1f us  max %8.1f us\n", what, percentile_us(ns, n, 0.5),
           percentile_us(ns, n, 0.99), percentile_us(ns, n, 0.999), ns[n - 1] / 1e3);
}

// A whole decimal number from min to max, or -1.
static long parse(const char *text, long min, long max) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    return (errno || end == text || *end || value < min || value > max) ? -1 : value;
}

int main(int argc, char **argv) {
    long rate = -1, count = -1;
    if (argc == 4) {
        size = parse(argv[1], 1, 64L << 20);
        rate = parse(argv[2], 1, 1000000);
        count = parse(argv[3], 1000, 100000000);
    }
    if (size < 1 || rate < 1 || count < 1) {
        fprintf(stderr, "usage: loopback_floor SIZE RATE COUNT (SIZE 1 to 67108864 bytes, RATE 1 to 1000000 "
                        "per second, COUNT 1000 to 100000000)\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);  // a failed echo shows as an error below, not a silent exit
    prctl(PR_SET_TIMERSLACK, 1UL);
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0
        || getsockname(listener, (struct sockaddr *)&address, &length) != 0) {
        perror("loopback_floor: listen");
        return 1;
    }
    pthread_t server;
    if (pthread_create(&server, NULL, echo, &listener) != 0) {
        fprintf(stderr, "loopback_floor: cannot start the echo thread\n");
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("loopback_floor: connect");
        return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char *buffer = calloc(1, (size_t)size);
    long *from_schedule = malloc((size_t)count * sizeof(long)), *from_send = malloc((size_t)count * sizeof(long));
    if (!buffer || !from_schedule || !from_send) {
        fprintf(stderr, "loopback_floor: out of memory\n");
        return 1;
    }
    long start = now_ns() + 1000000L;
    for (long i = 0; i < count; i++) {
        long due = start + i * 1000000000L / rate, t;
        while ((t = now_ns()) < due) {
            struct timespec pause = {0, due - t};
            nanosleep(&pause, NULL);
        }
        long sent = now_ns();
        if (write_all(fd, buffer, size) != 0 || read_all(fd, buffer, size) != 0) {
            perror("loopback_floor: echo");
            return 1;
        }
        long done = now_ns();
        from_schedule[i] = done - due;
        from_send[i] = done - sent;
    }
    printf("%ld-byte echo over loopback TCP, %ld/s, %ld round trips\n", size, rate, count);
    report("from the intended send time", from_schedule, count);
    report("from the actual send", from_send, count);
    return 0;
}
