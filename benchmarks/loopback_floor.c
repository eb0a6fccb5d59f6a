// The loopback floor of this machine: what a request/response round trip
// over TCP on 127.0.0.1 costs with no framework, no protocol and no work,
// measured the way `keel bench` measures (open loop, from each request's
// intended send time) and from its actual send. A server thread echoes
// SIZE-byte messages on a blocking socket; the client sends RATE per second
// on a fixed timetable (sleeping until each send time, timer slack 1 ns) and
// waits for each echo before the next. Any server's latency on loopback here
// is at least this.
//
//   cc -O2 -pthread -o /tmp/loopback_floor benchmarks/loopback_floor.c
//   /tmp/loopback_floor SIZE RATE COUNT      (e.g. 15000 5000 50000)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <pthread.h>
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

static int read_all(int fd, char *buffer, long n) {
    for (long got = 0; got < n;) {
        ssize_t r = read(fd, buffer + got, (size_t)(n - got));
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

static void report(const char *what, long *ns, long n) {
    qsort(ns, (size_t)n, sizeof *ns, by_value);
    printf("%-28s p50 %7.1f us  p99 %7.1f us  p99.9 %7.1f us  max %8.1f us\n", what, ns[n / 2] / 1e3,
           ns[n * 99 / 100] / 1e3, ns[n * 999 / 1000] / 1e3, ns[n - 1] / 1e3);
}

int main(int argc, char **argv) {
    if (argc != 4 || (size = atol(argv[1])) < 1 || atol(argv[2]) < 1 || atol(argv[3]) < 1000) {
        fprintf(stderr, "usage: loopback_floor SIZE RATE COUNT (SIZE >= 1 bytes, RATE >= 1 per second, COUNT >= 1000)\n");
        return 64;
    }
    long rate = atol(argv[2]), count = atol(argv[3]);
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
    pthread_create(&server, NULL, echo, &listener);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("loopback_floor: connect");
        return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char *buffer = calloc(1, (size_t)size);
    long *from_schedule = malloc((size_t)count * sizeof(long)), *from_send = malloc((size_t)count * sizeof(long));
    if (!buffer || !from_schedule || !from_send) return 1;
    long period = 1000000000L / rate, start = now_ns() + 1000000L;
    for (long i = 0; i < count; i++) {
        long due = start + i * period, t;
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
