/* connrate: new TCP connections per second against a Redis-speaking port.
 *
 * Each of P threads loops: connect, send an inline PING, read "+PONG\r\n", close.
 * Stops at the deadline (seconds) or after MAX connections in total, whichever comes first;
 * every socket operation has a timeout, so a stuck proxy cannot hang the run.
 *
 *   cc -O2 -pthread -o connrate connrate.c
 *   connrate HOST PORT PARALLEL SECONDS MAX
 *
 * Prints one line: "conns=N errors=E seconds=S rate=R p50_ms=A p99_ms=B" (latency of one
 * whole connect+PING+PONG+close), exit 0 if at least one connection succeeded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static double deadline;
static long max_conns;
static atomic_long started;
static atomic_long done;
static atomic_long errors;

#define LAT_CAP 400000
static float *lat; /* milliseconds, one per finished connection */
static atomic_long nlat;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int one(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) goto fail;
  static const char ping[] = "PING\r\n";
  if (write(fd, ping, sizeof ping - 1) != (ssize_t)(sizeof ping - 1)) goto fail;
  char buf[64];
  size_t got = 0;
  while (got < 7) {
    ssize_t n = read(fd, buf + got, sizeof buf - got);
    if (n <= 0) goto fail;
    got += (size_t)n;
  }
  if (memcmp(buf, "+PONG\r\n", 7) != 0) goto fail;
  close(fd);
  return 0;
fail:
  close(fd);
  return -1;
}

static void *worker(void *arg) {
  (void)arg;
  for (;;) {
    if (now() >= deadline) break;
    if (atomic_fetch_add(&started, 1) >= max_conns) break;
    double t0 = now();
    if (one() == 0) {
      atomic_fetch_add(&done, 1);
      long i = atomic_fetch_add(&nlat, 1);
      if (i < LAT_CAP) lat[i] = (float)((now() - t0) * 1e3);
    } else {
      atomic_fetch_add(&errors, 1);
      if (atomic_load(&errors) > 1000) break; /* a broken path: stop early */
    }
  }
  return NULL;
}

static int cmpf(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s HOST PORT PARALLEL SECONDS MAX\n", argv[0]);
    return 2;
  }
  memset(&target, 0, sizeof target);
  target.sin_family = AF_INET;
  target.sin_port = htons((unsigned short)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
    fprintf(stderr, "bad IPv4 address %s\n", argv[1]);
    return 2;
  }
  int par = atoi(argv[3]);
  if (par < 1 || par > 1024) par = 32;
  double secs = atof(argv[4]);
  max_conns = atol(argv[5]);
  lat = calloc(LAT_CAP, sizeof *lat);
  if (!lat) return 1;
  pthread_t th[1024];
  double t0 = now();
  deadline = t0 + secs;
  for (int i = 0; i < par; i++) pthread_create(&th[i], NULL, worker, NULL);
  for (int i = 0; i < par; i++) pthread_join(th[i], NULL);
  double el = now() - t0;
  long n = atomic_load(&done);
  long k = n < LAT_CAP ? n : LAT_CAP;
  double p50 = 0, p99 = 0;
  if (k > 0) {
    qsort(lat, (size_t)k, sizeof *lat, cmpf);
    p50 = lat[k / 2];
    p99 = lat[(long)(k * 0.99) < k ? (long)(k * 0.99) : k - 1];
  }
  printf("conns=%ld errors=%ld seconds=%.3f rate=%.1f p50_ms=%.3f p99_ms=%.3f\n", n,
         atomic_load(&errors), el, n / el, p50, p99);
  return n > 0 ? 0 : 1;
}
