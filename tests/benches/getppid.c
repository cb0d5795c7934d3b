/* Workload of the tracing and export benchmarks: N getppid() calls, as fast as possible or
 * paced at RATE calls per second, then the elapsed time in ns on stdout. Built static so it
 * runs in the busybox rootfs. Usage: getppid N [RATE] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long since(const struct timespec *a) {
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (b.tv_sec - a->tv_sec) * 1000000000L + (b.tv_nsec - a->tv_nsec);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    long rate = argc > 2 ? atol(argv[2]) : 0;
    struct timespec a;
    long sum = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        sum += getppid();
        /* Paced: every 1000 calls, wait until the schedule (i calls at i / RATE s) catches up. */
        if (rate > 0 && i % 1000 == 999) {
            long due = (long)((double)(i + 1) * 1e9 / (double)rate), now = since(&a);
            if (due > now) {
                struct timespec d = {(due - now) / 1000000000L, (due - now) % 1000000000L};
                nanosleep(&d, NULL);
            }
        }
    }
    printf("%ld\n", since(&a));
    return sum == 42;
}
