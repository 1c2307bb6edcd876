// wsbench.c - load client + ZeroMQ driver for the ZMQ->WebSocket gateway benchmarks.
//
// One process, two threads:
//   * driver thread: a raw ZMTP 3.0 PUB *server* (binds --pub-port, accepts the
//     gateway's SUB connection, does the NULL handshake, then writes 100-byte
//     message frames).  No libzmq on the load side, so the driver costs almost
//     nothing: frames are pre-built and written in 64 KiB chunks, each chunk
//     stamped with CLOCK_MONOTONIC just before write().
//   * main thread: epoll loop over N client connections, either
//       --mode ws   : RFC 6455 client (handshake, frame-header parsing, pong),
//       --mode zmtp : raw ZMTP 3.0 SUB client (greeting, READY, subscribe "").
//     Counts frames per connection, checks sequence order, records
//     publish->receive latency from the timestamp in the payload.
//
// Payload (100 bytes): u64 seq | u64 t_ns (CLOCK_MONOTONIC) | u32 magic|phase | pad
//   phase 0 = warm-up (sent every --warm-ms, default 20 ms, until every connection saw one)
//   phase 1 = measured messages, seq 0..M-1
//
// Output: one JSON line on stdout, also when the run fails ("status" says how; fatal errors add
// "error" and exit with code 3).  status: ok | stalled (no frame for --stall s) | timeout (--max) |
// connect_timeout | no_warmup | closed_before_measure | conn_closed | all_conns_closed |
// pub_conn_lost | error.
//
// Options (defaults in brackets):
//   --mode ws|zmtp [ws]   --port WS_PORT [8000]   --pub-port PUB_PORT [5555]
//   --n CLIENTS [1]       --m MESSAGES [1000]     --rate MSG_PER_S [0 = burst]
//   --gw-pid PID          gateway process whose CPU and RSS are read from /proc
//   --idle SECS           S3 mode: connect, warm up, idle SECS, report RSS growth of --gw-pid
//   --stall S [10]  --max S [300]  --conc K [64]  --warm-ms MS [20]  --coalesce-us US [0]
//   --deflate             offer permessage-deflate (as browsers do) and inflate RSV1 frames with zlib
//   --path STR ["/"]      request path of the WebSocket handshake, e.g. '/ws?format=raw'
//   --topic STR           send each message as a 2-frame ZMTP message [topic, payload] (MORE flag on the
//                         topic frame); the payload is unchanged (100 bytes).  Without it: 1 frame.
//                         In zmtp mode, frames with the MORE flag are skipped (the last frame is the data).
//   --no-lat              do not record latencies (burst runs: saves N*M*4 bytes and a big sort)
//   --connect-timeout S [60]  all N handshakes must complete within S seconds of start
//   --warm-timeout S [30]     every connection must get a warm-up message within S seconds after that
//
// Extensions for zmqws's benchmarks/ (not in the original kit):
//   --topics T            T topics: client i subscribes to TOPIC<i mod T> (fixed width, so no topic is a
//                         prefix of another) by adding `topic=...` to --path; the driver rotates the topic
//                         frame over the T topics (message seq goes to topic seq mod T; warm-up rounds send
//                         one message per topic).  Each client expects only its topic's messages and checks
//                         their order (seq advances by T).  Needs --topic.
//   --stalled K           clients 0..K-1 stop reading when the measured burst starts; once every other
//                         client has all its messages (or a gap report for the rest) they read again, and
//                         the run ends when every client has received + reported-missed = expected, or was
//                         closed.  Text frames {"op":"gap","missed":N} are summed per client ("missed").
//   --mode ingest         N WebSocket clients publish {"op":"publish",...} text frames (--window W in flight
//                         per client, each reply lets the next one go, for --secs S); one raw ZMTP SUB
//                         connected to --sub-port (the gateway's --publish-bind) counts what arrives, checks
//                         each publisher's order and the publish -> SUB latency.
//   --size BYTES          payload size of the broadcast messages (default 100, 20..16000); the same
//                         layout, padded with 'x'.
//   --pub-topics P        with --topics: the measured messages rotate over topics 0..P-1 only (default: all T);
//                         clients of the other topics expect nothing (the gateway must not scan them).
//   --pub-conns K         accept K SUB connections on --pub-port and send every message to each (a gateway
//                         with --workers K, each worker its own SUB).
//   JSON data frames (format=json, {"topic":..,"data":..}) are recognised: the data's first 24 bytes are
//   recovered (base64 or JSON string) and counted like a binary payload; "json_frames" counts them.
//   Output adds: missed, gap_frames, closed_1008, gw_rss_peak_kb (VmHWM), gw_rss_q_kb (max RSS while each
//   quarter of the burst was published); ingest: sent, acked, errors, sub_received, msgs_per_s.
//
// Build: gcc -O2 -pthread -o wsbench wsbench.c -lz
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define PAYLOAD 100  // default payload size; --size changes it for the fan-out modes (ingest data stays 100)
#define MAGIC 0xC0FFEE00u
#define LEFT_MAX 16384

enum { ST_FREE, ST_CONNECTING, ST_HS, ST_OPEN, ST_DEAD };
enum { K_WS, K_ZMTP };

typedef struct {
  int fd;
  int state;
  int warm;
  int done;
  uint64_t n1;        // phase-1 frames received
  uint64_t next_seq;  // expected next seq
  uint64_t ooo;       // out-of-order / gap events
  int zgreet;         // zmtp: greeting bytes still to skip
  int zsub;           // zmtp: subscription sent (only after the peer's READY)
  z_stream *zs;       // permessage-deflate inflater (lazily created)
  int kind;           // K_WS or K_ZMTP (ingest mode: N WebSocket publishers + one ZMTP SUB)
  int topic;          // --topics: index of this client's topic
  int stalled;        // --stalled: does not read during the burst
  int close_code;     // close code of a close frame received (0: none)
  uint64_t expect;    // phase-1 messages this connection should get
  uint64_t missed;    // sum of the gateway's {"op":"gap","missed":N} reports
  long sent, acked, errs, outstanding;  // ingest: publishes sent / answered published / answered error
  int warm_out;       // ingest: warm-up publishes not answered yet (they are answered first)
  int to_send;        // ingest: publishes to send after this read
  int left_len;
  unsigned char left[LEFT_MAX];
} conn_t;

// ---------------- options
static const char *mode = "ws";
static int ws_port = 8000, pub_port = 5555, N = 1, CONC = 64;
static long M = 1000;
static double rate = 0;        // msgs/s, 0 = as fast as possible
static int gw_pid = 0;
static double idle_secs = -1;  // S3: >=0 -> idle mode
static double stall_s = 10, max_s = 300;
static int warm_ms = 20;
static int coalesce_us = 0;
static int deflate_offer = 0;
static int n_deflate = 0;  // connections whose 101 response accepted permessage-deflate
static uint64_t n_inflated = 0;  // sleep between epoll rounds: fewer, larger reads (throughput runs only)
static const char *path = "/";
static const char *topic = NULL;  // --topic: 2-frame messages [topic, payload]
static unsigned char *tfr = NULL;   // pre-built topic frame (flags MORE [+LONG], size, bytes)
static int tfr_len = 0;
static int no_lat = 0;
static double connect_timeout = 60, warm_timeout = 30;
static int T = 0;                  // --topics
static int PT = 0;                 // --pub-topics: measured messages rotate over topics 0..PT-1 (0: all T)
static int pub_conns = 1;          // --pub-conns: SUB connections the driver accepts (gateway --workers)
static uint64_t json_frames = 0;   // data messages that came as JSON text frames (format=json)
static unsigned char *tfrs = NULL; // T pre-built topic frames of tfr_len bytes each
static char (*tnames)[64] = NULL;  // topic names
static int K_stalled = 0;          // --stalled
static int ingest = 0;             // --mode ingest
static int sub_port = 0;           // ingest: the gateway's PUB (--publish-bind) port
static int window = 16;            // ingest: publishes in flight per client
static int PL = PAYLOAD;           // --size: payload bytes of each broadcast message (20..16000)
static double ingest_secs = 2.0;   // ingest: how long clients publish

// ---------------- shared state
static atomic_int ws_ready = 0, all_warm = 0, pub_done = 0, stop_all = 0;
static atomic_long pub_sent = 0;
static atomic_ullong last_warm_ns = 0;  // when the last warm-up frame arrived (main thread writes)
static atomic_int pub_connected = 0, pub_failed = 0;
static atomic_int printed = 0;
static uint64_t bad_frames = 0;  // data frames that are not a 100-byte benchmark payload
static double t0_pub = 0, t1_pub = 0;  // measured phase publish start/end

static conn_t *conns;
static int n_open = 0, n_warm = 0, n_done = 0, n_dead = 0;
static uint64_t total1 = 0, ooo_total = 0;
static uint64_t expected_total = 0, missed_total = 0, gap_frames = 0, ctl_other = 0;
static int n_closed_1008 = 0, n_closed_other = 0;
static long rss_q[4] = {0, 0, 0, 0};  // max gateway RSS while each quarter of the burst was published
static int n_dead_undone = 0;  // connections that closed before receiving all M messages
static uint32_t *lat = NULL;  // latency samples (us)
static size_t lat_n = 0, lat_cap = 0;
static double t_last_frame = 0;
static double t_all_done = 0;
static int epfd;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}
static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') printf("\\%c", ch);
    else if (ch < 0x20 || ch >= 0x7f) printf("\\u%04x", ch);
    else putchar(ch);
  }
  putchar('"');
}
// fatal error: still one JSON line on stdout (plus the message on stderr), exit code 3
static void fail_json(const char *st, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (atomic_exchange(&printed, 1)) _exit(3);
  fprintf(stderr, "wsbench: %s: %s\n", st, msg);
  printf("{\"mode\":\"%s\",\"n\":%d,\"m\":%ld,\"rate\":%g,\"status\":\"%s\",\"error\":", mode, N, M, rate, st);
  json_str(msg);
  printf(",\"open\":%d,\"warm\":%d,\"pub_connected\":%d}\n", n_open, n_warm, (int)pub_connected);
  fflush(stdout);
  _exit(3);
}
static void die(const char *m) { fail_json("error", "%s: %s", m, strerror(errno)); }
static int write_all(int fd, const void *b, size_t n) {
  const char *p = b;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { usleep(100); continue; }
      return -1;
    }
    p += w; n -= w;
  }
  return 0;
}

// ---------------- gateway /proc readers
static long proc_cpu_ticks(int pid) {
  if (!pid) return 0;
  char fn[64], buf[2048];
  snprintf(fn, sizeof fn, "/proc/%d/stat", pid);
  FILE *f = fopen(fn, "r");
  if (!f) return 0;
  size_t r = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[r] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  long ut = 0, st = 0;
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    field++;
    if (field == 14) ut = atol(tok);
    if (field == 15) { st = atol(tok); break; }
  }
  return ut + st;
}
static long proc_status_kb(int pid, const char *key) {  // key: "VmRSS:" or "VmHWM:" (peak RSS)
  if (!pid) return 0;
  char fn[64], line[256];
  snprintf(fn, sizeof fn, "/proc/%d/status", pid);
  FILE *f = fopen(fn, "r");
  if (!f) return 0;
  long kb = 0;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, key, kl)) { kb = atol(line + kl); break; }
  fclose(f);
  return kb;
}
static long proc_rss_kb(int pid) { return proc_status_kb(pid, "VmRSS:"); }
static double self_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

// ---------------- driver (raw ZMTP PUB)
static int pub_lfd;
static void fill_payload(unsigned char *p, uint64_t seq, uint64_t t, uint32_t phase) {
  memcpy(p, &seq, 8);
  memcpy(p + 8, &t, 8);
  uint32_t m = MAGIC | phase;
  memcpy(p + 16, &m, 4);
  memset(p + 20, 'x', PL - 20);
}
static void zmtp_data_header(unsigned char *h, int len) {  // last (or only) frame: no MORE flag
  if (len < 256) { h[0] = 0; h[1] = (unsigned char)len; return; }
  h[0] = 0x02;  // LONG
  for (int k = 0; k < 8; k++) h[1 + k] = (unsigned char)((uint64_t)len >> (56 - 8 * k));
}
static void zmtp_greeting(unsigned char *g) {
  memset(g, 0, 64);
  g[0] = 0xFF; g[8] = 0x01; g[9] = 0x7F;
  g[10] = 3; g[11] = 0;  // ZMTP 3.0
  memcpy(g + 12, "NULL", 4);
}
static int zmtp_ready(unsigned char *b, const char *stype) {
  int sl = strlen(stype);
  int body = 1 + 5 + 1 + 11 + 4 + sl;
  int i = 0;
  b[i++] = 0x04; b[i++] = body;
  b[i++] = 5; memcpy(b + i, "READY", 5); i += 5;
  b[i++] = 11; memcpy(b + i, "Socket-Type", 11); i += 11;
  b[i++] = 0; b[i++] = 0; b[i++] = 0; b[i++] = sl;
  memcpy(b + i, stype, sl); i += sl;
  return i;
}

static int pfds[16];  // the gateways' SUB connections (one per worker)

// write the same bytes to every SUB connection
static int pub_write(const void *b, size_t n) {
  for (int k = 0; k < pub_conns; k++)
    if (write_all(pfds[k], b, n) < 0) return -1;
  return 0;
}
static void pub_drain(unsigned char *rb, size_t cap) {  // read and ignore subscriptions
  for (int k = 0; k < pub_conns; k++)
    while (read(pfds[k], rb, cap) > 0) {}
}

static void *driver(void *arg) {
  (void)arg;
  unsigned char rb[4096];
  for (int k = 0; k < pub_conns; k++) {
    // accept a gateway's SUB (or XSUB) connection
    int fd;
    for (;;) {
      fd = accept(pub_lfd, NULL, NULL);
      if (fd >= 0) break;
      if (errno != EINTR) { atomic_store(&pub_failed, 1); return NULL; }
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    unsigned char hs[128];
    zmtp_greeting(hs);
    int l = zmtp_ready(hs + 64, "PUB");
    write_all(fd, hs, 64 + l);
    // read peer greeting (64) + whatever follows; we ignore subscriptions (PUB sends all).
    // wait for the peer's greeting (64 bytes) and READY command before sending data:
    // libzmq treats frames that arrive before its own handshake completes as commands.
    int got = 0;
    for (;;) {
      ssize_t r = read(fd, rb + got, sizeof rb - got);
      if (r <= 0) { atomic_store(&pub_failed, 1); return NULL; }  // the gateway's SUB went away
      got += r;
      if (got >= 66 && got >= 66 + rb[65]) break;
    }
    pfds[k] = fd;
  }
  atomic_store(&pub_connected, 1);
  usleep(20000);
  for (int k = 0; k < pub_conns; k++) fcntl(pfds[k], F_SETFL, fcntl(pfds[k], F_GETFL) | O_NONBLOCK);
  if (ingest) {  // the gateway's SUB input stays idle: clients publish, the SUB in main() counts
    while (!stop_all) {
      pub_drain(rb, sizeof rb);
      usleep(10000);
    }
    return NULL;
  }
  while (!ws_ready && !stop_all) usleep(1000);
  // one message = [topic frame (MORE)] + payload frame; TP = offset of the payload frame.
  // With --topics every topic frame has the same length, so FR is the same for every message.
  const int ZH = PL < 256 ? 2 : 9;  // ZMTP data frame header: short, or LONG with a 64-bit size
  const int TP = tfr_len, FR = tfr_len + ZH + PL;
  const int NT = T > 0 ? T : 1;  // messages per warm-up round: one per topic
  // warm-up: one round every --warm-ms until every connection has one
  unsigned char *fr = malloc((size_t)FR * NT);
  for (int k = 0; k < NT; k++) {
    unsigned char *p = fr + (size_t)k * FR;
    if (TP) memcpy(p, T > 0 ? tfrs + (size_t)k * tfr_len : tfr, TP);
    zmtp_data_header(p + TP, PL);
  }
  uint64_t wseq = 0;
  while (!all_warm && !stop_all) {
    uint64_t t = now_ns();
    for (int k = 0; k < NT; k++) fill_payload(fr + (size_t)k * FR + TP + ZH, wseq++, t, 0);
    if (pub_write(fr, (size_t)FR * NT) < 0) { atomic_store(&pub_failed, 1); return NULL; }
    pub_drain(rb, sizeof rb);
    usleep(warm_ms * 1000);
  }
  if (stop_all) return NULL;
  usleep(200000);  // let warm-up traffic drain
  // ... all of it: with many topics a warm-up round is many separate writes for the gateway, and
  // rounds queued behind the first would be measured with the burst. Start once no warm-up frame
  // has arrived for 150 ms (at most 10 s more).
  for (int k = 0; k < 1000 && !stop_all && now_ns() - atomic_load(&last_warm_ns) < 150000000ull; k++)
    usleep(10000);
  if (rate <= 0) {
    // as fast as possible: 64 KiB chunks, stamped just before write()
    int per = 65536 / FR;
    unsigned char *chunk = malloc((size_t)per * FR);
    for (int i = 0; i < per; i++) {
      unsigned char *p = chunk + (size_t)i * FR;
      if (TP) memcpy(p, tfr, TP);
      zmtp_data_header(p + TP, PL);
    }
    t0_pub = now();
    long seq = 0;
    while (seq < M && !stop_all) {
      int k = (M - seq < per) ? (int)(M - seq) : per;
      uint64_t t = now_ns();
      for (int i = 0; i < k; i++) {
        unsigned char *p = chunk + (size_t)i * FR;
        if (T > 0) memcpy(p, tfrs + (size_t)((seq + i) % PT) * tfr_len, TP);
        fill_payload(p + TP + ZH, seq + i, t, 1);
      }
      if (pub_write(chunk, (size_t)k * FR) < 0) { atomic_store(&pub_failed, 1); return NULL; }
      seq += k;
      atomic_store(&pub_sent, seq);
    }
    t1_pub = now();
    free(chunk);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t base = (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec + 1000000;
    uint64_t step = (uint64_t)(1e9 / rate);
    t0_pub = (base) * 1e-9;
    for (long seq = 0; seq < M && !stop_all; seq++) {
      uint64_t tgt = base + seq * step;
      ts.tv_sec = tgt / 1000000000ull;
      ts.tv_nsec = tgt % 1000000000ull;
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
      if (T > 0) memcpy(fr, tfrs + (size_t)(seq % PT) * tfr_len, TP);
      fill_payload(fr + TP + ZH, seq, now_ns(), 1);
      if (pub_write(fr, FR) < 0) { atomic_store(&pub_failed, 1); return NULL; }
      atomic_store(&pub_sent, seq + 1);
      if ((seq & 63) == 0) pub_drain(rb, sizeof rb);
    }
    t1_pub = now();
  }
  atomic_store(&pub_done, 1);
  // keep the connection open until the main thread exits
  while (!stop_all) {
    pub_drain(rb, sizeof rb);
    usleep(10000);
  }
  return NULL;
}

// ---------------- client side
static const char *WS_KEY = "dGhlIHNhbXBsZSBub25jZQ==";
static char req[512];
static int req_len;
static unsigned char zhello[128];
static int zhello_len;

// the handshake request of client i (--topics adds its own topic to --path)
static int build_req(int i, char *out, size_t cap) {
  if (T <= 0 || i >= N) return snprintf(out, cap, "%s", req);
  const char *q = strchr(path, '?') ? "&" : "?";
  return snprintf(out, cap,
                  "GET %s%stopic=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                  path, q, tnames[conns[i].topic], ws_port, WS_KEY,
                  deflate_offer ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
}

static int start_connect(int i) {
  conn_t *c = &conns[i];
  int port = (ingest && c->kind == K_ZMTP) ? sub_port : ws_port;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket");
  struct linger lg = {1, 0};  // RST on close: no TIME_WAIT pile-up between runs
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(0x7f000001);
  int r = connect(fd, (struct sockaddr *)&a, sizeof a);
  if (r < 0 && errno != EINPROGRESS) die("connect");
  c->fd = fd;
  c->state = ST_CONNECTING;
  c->left_len = 0;
  c->zgreet = 64;
  c->zsub = 0;
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = i};
  epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
  return 0;
}

static int n_done_active = 0, n_dead_active = 0;  // the same, for clients that are not --stalled

// a connection has everything it should get: received, or reported missed by a gap message
static void settle(conn_t *c, double tnow) {
  if (!c->done && c->n1 + c->missed >= c->expect) {
    c->done = 1;
    n_done++;
    if (!c->stalled) n_done_active++;
    if (n_done == N) t_all_done = tnow;
  }
}
static void mark_dead(conn_t *c) {
  if (c->state != ST_DEAD) {
    c->state = ST_DEAD;
    if (c->kind != K_WS || c - conns >= N) return;  // ingest's SUB is not one of the N clients
    n_dead++;
    if (!c->stalled) n_dead_active++;
    if (!c->done) n_dead_undone++;
  }
}

// ---------------- ingest (--mode ingest)
static long ing_sent = 0, ing_acked = 0, ing_errs = 0, sub_recv = 0, sub_ooo = 0, sub_bad = 0;
static long *sub_next = NULL;     // next seq expected from each publisher
static char *sub_warm = NULL;     // the SUB saw a warm-up publish of this client
static int ing_measuring = 0;
static double ing_t0 = 0, ing_stop = 0, t_last_sub = 0, t_last_ack = 0;
static char topic_json[600];      // --topic, JSON-escaped enough for plain names
static int to_send_any = 0;

// send k publish frames of client i in one write: masked text frames (mask key 0), 100-byte data
//   data = phase ('w' warm-up | 'm' measured) | 7 hex client id | 16 hex seq | 16 hex t_ns | 'x' padding
static void send_publishes(int i, int k, int warm) {
  static unsigned char buf[1 << 16];
  conn_t *c = &conns[i];
  size_t off = 0;
  for (int j = 0; j < k; j++) {
    char data[128];
    int dl = snprintf(data, sizeof data, "%c%07x%016llx%016llx", warm ? 'w' : 'm', i & 0xFFFFFFF,
                      (unsigned long long)(warm ? 0 : c->sent), (unsigned long long)now_ns());
    memset(data + dl, 'x', PAYLOAD - dl);
    data[PAYLOAD] = 0;
    char js[800];
    int jl = snprintf(js, sizeof js, "{\"op\":\"publish\",\"topic\":\"%s\",\"data\":\"%s\"}", topic_json, data);
    if (off + 8 + jl > sizeof buf) { write_all(c->fd, buf, off); off = 0; }
    unsigned char *f = buf + off;
    f[0] = 0x81;
    if (jl < 126) { f[1] = 0x80 | jl; memset(f + 2, 0, 4); off += 6; }
    else { f[1] = 0x80 | 126; f[2] = jl >> 8; f[3] = jl & 0xFF; memset(f + 4, 0, 4); off += 8; }
    memcpy(buf + off, js, jl);  // mask key 0: the payload goes as it is
    off += jl;
    c->outstanding++;
    if (warm) c->warm_out++;
    else { c->sent++; ing_sent++; }
  }
  if (off) write_all(c->fd, buf, off);
}

static void on_ack(conn_t *c, int err, double tnow) {
  if (c->outstanding > 0) c->outstanding--;
  // replies come in order: the warm-up publishes were sent first and are answered first
  if (c->warm_out > 0) { c->warm_out--; return; }
  if (err) { c->errs++; ing_errs++; }
  else { c->acked++; ing_acked++; }
  t_last_ack = tnow;
  if (ing_measuring && tnow < ing_stop) { c->to_send++; to_send_any = 1; }
}

static void on_ingest_sub(const unsigned char *p, size_t len, double tnow, uint64_t tnow_ns) {
  if (len != PAYLOAD || (p[0] != 'w' && p[0] != 'm')) { sub_bad++; return; }
  char h[17];
  memcpy(h, p + 1, 7); h[7] = 0;
  long id = strtol(h, NULL, 16);
  if (id < 0 || id >= N) { sub_bad++; return; }
  if (p[0] == 'w') {
    if (!sub_warm[id]) { sub_warm[id] = 1; n_warm++; }
    return;
  }
  memcpy(h, p + 8, 16); h[16] = 0;
  long seq = (long)strtoull(h, NULL, 16);
  memcpy(h, p + 24, 16);
  uint64_t t = strtoull(h, NULL, 16);
  if (seq != sub_next[id]) sub_ooo++;
  sub_next[id] = seq + 1;
  sub_recv++;
  t_last_sub = tnow;
  if (no_lat) return;
  if (lat_n == lat_cap) {
    lat_cap = lat_cap ? lat_cap * 2 : (1 << 20);
    lat = realloc(lat, lat_cap * sizeof *lat);
  }
  uint64_t d = tnow_ns > t ? (tnow_ns - t) / 1000 : 0;
  lat[lat_n++] = d > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)d;
}

// a JSON text frame from the gateway: gap report, publish reply, or something else
static void on_text_ctl(conn_t *c, const unsigned char *p, size_t len, double tnow) {
  char b[256];  // the first bytes, without blanks: {"op": "gap"} and {"op":"gap"} read alike
  size_t l = 0;
  for (size_t k = 0; k < len && l < sizeof b - 1; k++)
    if (p[k] != ' ' && p[k] != '\t' && p[k] != '\n' && p[k] != '\r') b[l++] = p[k];
  b[l] = 0;
  if (strstr(b, "\"op\":\"gap\"")) {
    char *m = strstr(b, "\"missed\":");
    uint64_t v = m ? strtoull(m + 9, NULL, 10) : 0;
    c->missed += v;
    missed_total += v;
    gap_frames++;
    t_last_frame = tnow;
    settle(c, tnow);
  } else if (strstr(b, "\"op\":\"published\"")) {
    on_ack(c, 0, tnow);
  } else if (strstr(b, "\"op\":\"error\"")) {
    on_ack(c, 1, tnow);
  } else {
    ctl_other++;
  }
}

static void on_phase_frame(conn_t *c, const unsigned char *p, size_t len, double tnow, uint64_t tnow_ns) {
  if (len < 20) { bad_frames++; return; }
  uint32_t m;
  memcpy(&m, p + 16, 4);
  if ((m & 0xFFFFFF00u) != MAGIC) { bad_frames++; return; }
  if ((m & 0xFF) == 0) {
    if (!c->warm) { c->warm = 1; n_warm++; }
    atomic_store(&last_warm_ns, tnow_ns);
    return;
  }
  uint64_t seq, t;
  memcpy(&seq, p, 8);
  memcpy(&t, p + 8, 8);
  if (seq != c->next_seq) c->ooo++;
  c->next_seq = seq + (T > 0 ? PT : 1);  // --topics: this client's messages are every PT-th
  c->n1++;
  total1++;
  t_last_frame = tnow;
  if (no_lat) goto counted;
  if (lat_n == lat_cap) {
    lat_cap = lat_cap ? lat_cap * 2 : (1 << 20);
    lat = realloc(lat, lat_cap * sizeof *lat);
  }
  uint64_t d = tnow_ns > t ? (tnow_ns - t) / 1000 : 0;
  lat[lat_n++] = d > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)d;
counted:
  settle(c, tnow);
}


// A data message in the gateway's JSON format (format=json): {"topic":...,"data":"...",...}. The first
// 24 bytes of the data (seq, timestamp, magic) are recovered, from base64 ("encoding":"base64") or from
// the JSON string, and counted like a binary payload. Returns 0 if the frame is not a data message.
static int b64v(unsigned char ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+') return 62;
  if (ch == '/') return 63;
  return -1;
}
static int on_json_data(conn_t *c, const unsigned char *p, size_t len, double tnow, uint64_t tnow_ns) {
  static const char key[] = "\"data\":\"";
  const unsigned char *q = memmem(p, len < 320 ? len : 320, key, sizeof key - 1);  // near the start
  if (!q) return 0;
  q += sizeof key - 1;
  const unsigned char *end = p + len;
  unsigned char out[24];
  size_t n = 0;
  // the gateway writes "encoding":"base64" right after the data string; look there first
  const unsigned char *dq = memchr(q, '"', end - q);
  int b64 = dq && end - dq > 20 ? !memcmp(dq + 1, ",\"encoding\":\"base64\"", 20)
                                : memmem(p, len, "\"encoding\":\"base64\"", 19) != NULL;
  if (!b64 && dq && end - dq > 20 && dq[-1] != '\\') b64 = memmem(dq, end - dq, "\"encoding\":\"base64\"", 19) != NULL;
  if (b64) {
    while (n + 3 <= sizeof out && q + 4 <= end) {
      int v0 = b64v(q[0]), v1 = b64v(q[1]), v2 = b64v(q[2]), v3 = b64v(q[3]);
      if (v0 < 0 || v1 < 0 || v2 < 0 || v3 < 0) break;
      out[n++] = (unsigned char)(v0 << 2 | v1 >> 4);
      out[n++] = (unsigned char)(v1 << 4 | v2 >> 2);
      out[n++] = (unsigned char)(v2 << 6 | v3);
      q += 4;
    }
  } else {  // a JSON string of UTF-8 text: undo the escapes
    while (n < sizeof out && q < end && *q != '"') {
      unsigned char ch = *q++;
      if (ch != '\\') { out[n++] = ch; continue; }
      if (q >= end) break;
      ch = *q++;
      if (ch == 'u' && q + 4 <= end) {
        char hex[5] = {(char)q[0], (char)q[1], (char)q[2], (char)q[3], 0};
        unsigned cp = (unsigned)strtoul(hex, NULL, 16);
        q += 4;
        if (cp < 0x80) out[n++] = (unsigned char)cp;
        else if (cp < 0x800 && n + 2 <= sizeof out) { out[n++] = 0xC0 | cp >> 6; out[n++] = 0x80 | (cp & 0x3F); }
        else if (n + 3 <= sizeof out) {
          out[n++] = 0xE0 | cp >> 12; out[n++] = 0x80 | ((cp >> 6) & 0x3F); out[n++] = 0x80 | (cp & 0x3F);
        } else break;
      } else {
        out[n++] = ch == 'n' ? '\n' : ch == 't' ? '\t' : ch == 'r' ? '\r' : ch == 'b' ? '\b' : ch == 'f' ? '\f' : ch;
      }
    }
  }
  json_frames++;
  on_phase_frame(c, out, n, tnow, tnow_ns);
  return 1;
}

// parse buffered bytes; returns bytes consumed
static size_t parse_ws(conn_t *c, unsigned char *b, size_t n, double tnow, uint64_t tnow_ns) {
  size_t off = 0;
  uint64_t fast = 0;  // measured frames counted on the fast path below
  const uint64_t stride = T > 0 ? PT : 1;
  const size_t fhl = PL < 126 ? 2 : 4;             // the server's frame header for PL-byte payloads
  const unsigned char fb1 = PL < 126 ? PL : 126;
  while (n - off >= 2) {
    unsigned char b0 = b[off], b1 = b[off + 1];
    // Fast path (--no-lat runs, so the client outruns the gateway at tens of millions of frames/s): an
    // unmasked binary frame holding a measured 100-byte payload: check its order and count it.
    if (no_lat && b0 == 0x82 && b1 == fb1 && n - off >= fhl + PL &&
        (fhl == 2 || (b[off + 2] == (PL >> 8) && b[off + 3] == (PL & 0xFF)))) {
      const unsigned char *p = b + off + fhl;
      uint32_t m;
      memcpy(&m, p + 16, 4);
      if (m == (MAGIC | 1u)) {
        uint64_t seq;
        memcpy(&seq, p, 8);
        c->ooo += seq != c->next_seq;
        c->next_seq = seq + stride;
        fast++;
        off += fhl + PL;
        continue;
      }
    }
    if (fast) {  // keep the slow path's bookkeeping in order
      c->n1 += fast;
      total1 += fast;
      t_last_frame = tnow;
      fast = 0;
      settle(c, tnow);
    }
    uint64_t plen = b1 & 0x7F;
    size_t h = 2;
    if (plen == 126) {
      if (n - off < 4) break;
      plen = ((uint64_t)b[off + 2] << 8) | b[off + 3];
      h = 4;
    } else if (plen == 127) {
      if (n - off < 10) break;
      plen = 0;
      for (int k = 0; k < 8; k++) plen = (plen << 8) | b[off + 2 + k];
      h = 10;
    }
    if (b1 & 0x80) h += 4;  // server should not mask
    if (h + plen > LEFT_MAX) fail_json("error", "websocket frame too big: %lu bytes", (unsigned long)plen);
    if (n - off < h + plen) break;
    unsigned char *p = b + off + h;
    int op = b0 & 0x0F;
    if ((op == 1 || op == 2 || op == 0) && (b0 & 0x40)) {  // RSV1: permessage-deflate
      static unsigned char out[8192];
      static const unsigned char tail[4] = {0x00, 0x00, 0xff, 0xff};
      if (!c->zs) {
        c->zs = calloc(1, sizeof(z_stream));
        if (inflateInit2(c->zs, -15) != Z_OK) fail_json("error", "inflateInit2 failed");
      }
      z_stream *z = c->zs;
      z->next_out = out; z->avail_out = sizeof out;
      z->next_in = p; z->avail_in = plen;
      int zr = inflate(z, Z_SYNC_FLUSH);
      z->next_in = (unsigned char *)tail; z->avail_in = 4;
      zr = inflate(z, Z_SYNC_FLUSH);
      if (zr != Z_OK && zr != Z_BUF_ERROR) fail_json("error", "inflate error %d", zr);
      n_inflated++;
      on_phase_frame(c, out, sizeof out - z->avail_out, tnow, tnow_ns);
    } else if (op == 1 && plen > 0 && p[0] == '{') {  // JSON text: data (format=json) or a control message
      if (!on_json_data(c, p, plen, tnow, tnow_ns)) on_text_ctl(c, p, plen, tnow);
    } else if (op == 1 || op == 2 || op == 0) {
      on_phase_frame(c, p, plen, tnow, tnow_ns);
    } else if (op == 9) {  // ping -> pong (mask key 0)
      unsigned char pong[2 + 4 + 125];
      pong[0] = 0x8A; pong[1] = 0x80 | (unsigned char)plen;
      memset(pong + 2, 0, 4);
      memcpy(pong + 6, p, plen);
      (void)!write(c->fd, pong, 6 + plen);
    } else if (op == 8) {
      int code = plen >= 2 ? (p[0] << 8) | p[1] : 1005;
      if (!c->close_code) {
        c->close_code = code;
        if (code == 1008) n_closed_1008++;
        else n_closed_other++;
      }
      mark_dead(c);
    }
    off += h + plen;
  }
  if (fast) {
    c->n1 += fast;
    total1 += fast;
    t_last_frame = tnow;
    settle(c, tnow);
  }
  return off;
}

static size_t parse_zmtp(conn_t *c, unsigned char *b, size_t n, double tnow, uint64_t tnow_ns) {
  size_t off = 0;
  if (c->zgreet) {
    size_t k = n < (size_t)c->zgreet ? n : (size_t)c->zgreet;
    c->zgreet -= k;
    off += k;
  }
  while (n - off >= 2) {
    unsigned char fl = b[off];
    uint64_t plen;
    size_t h;
    if (fl & 0x02) {
      if (n - off < 9) break;
      plen = 0;
      for (int k = 0; k < 8; k++) plen = (plen << 8) | b[off + 1 + k];
      h = 9;
    } else {
      plen = b[off + 1];
      h = 2;
    }
    if (h + plen > LEFT_MAX) fail_json("error", "zmtp frame too big: %lu bytes", (unsigned long)plen);
    if (n - off < h + plen) break;
    if (!(fl & 0x04)) {
      if (!(fl & 0x01)) {  // MORE set: topic frame, skip
        if (ingest) on_ingest_sub(b + off + h, plen, tnow, tnow_ns);
        else on_phase_frame(c, b + off + h, plen, tnow, tnow_ns);
      }
    }
    else if (!c->zsub) {  // peer's READY: the handshake is done, now subscribe to everything
      static const unsigned char subs[3] = {0x00, 0x01, 0x01};
      write_all(c->fd, subs, 3);
      c->zsub = 1;
    }
    off += h + plen;
  }
  return off;
}

static unsigned char rbuf[LEFT_MAX + 262144];

static void handle_readable(int i) {
  conn_t *c = &conns[i];
  memcpy(rbuf, c->left, c->left_len);
  ssize_t r = read(c->fd, rbuf + c->left_len, sizeof rbuf - c->left_len);
  if (r <= 0) {
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    mark_dead(c);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    return;
  }
  size_t n = c->left_len + r;
  double tnow = now();
  uint64_t tns = (uint64_t)(tnow * 1e9);
  size_t off = 0;
  if (c->state == ST_HS) {
    // look for end of HTTP response header
    unsigned char *e = memmem(rbuf, n, "\r\n\r\n", 4);
    if (!e) {
      if (n > 8000) fail_json("handshake_failed", "handshake response header longer than 8000 bytes");
      memcpy(c->left, rbuf, n); c->left_len = n;
      return;
    }
    if (n < 12 || memcmp(rbuf + 9, "101", 3)) {
      unsigned char *eol = memmem(rbuf, n, "\r\n", 2);
      int l1 = eol ? (int)(eol - rbuf) : (int)(n > 200 ? 200 : n);
      fail_json("handshake_failed", "GET %s answered: %.*s", path, l1 > 200 ? 200 : l1, rbuf);
    }
    off = (e - rbuf) + 4;
    if (memmem(rbuf, off, "permessage-deflate", 18)) n_deflate++;
    c->state = ST_OPEN;
    n_open++;
  }
  if (c->kind == K_WS)
    off += parse_ws(c, rbuf + off, n - off, tnow, tns);
  else
    off += parse_zmtp(c, rbuf + off, n - off, tnow, tns);
  c->left_len = n - off;
  memcpy(c->left, rbuf + off, c->left_len);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static void print_lat(void) {
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, pmax = 0;
  if (lat_n) {
    qsort(lat, lat_n, sizeof *lat, cmp_u32);
    p50 = lat[(size_t)(lat_n * 0.50)];
    p90 = lat[(size_t)(lat_n * 0.90)];
    p99 = lat[(size_t)(lat_n * 0.99)];
    p999 = lat[(size_t)(lat_n * 0.999)];
    pmax = lat[lat_n - 1];
  }
  printf("\"lat_us\":{\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,\"p999\":%.0f,\"max\":%.0f},", p50, p90, p99, p999, pmax);
}

// --mode ingest: N WebSocket clients publish through the gateway; a raw ZMTP SUB on the gateway's PUB counts
static int main_ingest(void) {
  double t_start = now();
  sub_next = calloc(N, sizeof *sub_next);
  sub_warm = calloc(N, 1);
  struct epoll_event evs[1024];
  const char *status = "ok";
  int next = 0, inflight = 0, sub_ok = 0, nretry = 0;
  int *retry = calloc(N + 1, sizeof(int));
  double t_connected = 0, t_warm = 0, t_sub = 0, last_warm = 0, last_retry = 0, cpu_self0 = 0;
  long cpu_gw0 = 0;
  double rss_before = proc_rss_kb(gw_pid);
  start_connect(N);  // the SUB first: what is published before it subscribed, the PUB drops
  for (;;) {
    double tn = now();
    if (sub_ok && tn - t_sub > 0.2)  // the gateway's PUB has had time to take the subscription
      while (next < N && inflight < CONC) { start_connect(next++); inflight++; }
    if (nretry && tn - last_retry > 0.05) {
      for (int k = 0; k < nretry; k++) start_connect(retry[k]);
      nretry = 0;
      last_retry = tn;
    }
    int ne = epoll_wait(epfd, evs, 1024, 10);
    tn = now();
    for (int e = 0; e < ne; e++) {
      int i = evs[e].data.u32;
      conn_t *c = &conns[i];
      if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
          epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
          close(c->fd);
          c->state = ST_FREE;
          retry[nretry++] = i;
          continue;
        }
        if (!(evs[e].events & EPOLLOUT) && !(evs[e].events & EPOLLIN)) continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        if (c->kind == K_WS) {
          char rq[1024];
          int rl = build_req(i, rq, sizeof rq);
          write_all(c->fd, rq, rl);
          c->state = ST_HS;
        } else {
          write_all(c->fd, zhello, zhello_len);
          c->state = ST_OPEN;
        }
        continue;
      }
      int was_hs = c->state == ST_HS;
      handle_readable(i);
      if (was_hs && c->state != ST_HS) inflight--;
    }
    if (!sub_ok && conns[N].zsub) { sub_ok = 1; t_sub = tn; }
    if (to_send_any) {  // each reply lets one more publish go, all of one client's in one write
      to_send_any = 0;
      for (int i = 0; i < N; i++)
        if (conns[i].to_send) {
          if (conns[i].state == ST_OPEN) send_publishes(i, conns[i].to_send, 0);
          conns[i].to_send = 0;
        }
    }
    if (!ws_ready && n_open == N) { t_connected = tn; atomic_store(&ws_ready, 1); }
    if (ws_ready && !ing_measuring && tn - last_warm > warm_ms / 1000.0) {
      last_warm = tn;  // warm-up: publish until the SUB has seen one message of every client
      for (int i = 0; i < N; i++)
        if (!sub_warm[i] && conns[i].state == ST_OPEN && conns[i].warm_out < 4) send_publishes(i, 1, 1);
    }
    if (ws_ready && !ing_measuring && n_warm == N) {
      t_warm = tn;
      atomic_store(&all_warm, 1);
      cpu_gw0 = proc_cpu_ticks(gw_pid);
      cpu_self0 = self_cpu();
      ing_t0 = now();
      ing_stop = ing_t0 + ingest_secs;
      t_last_sub = t_last_ack = ing_t0;
      ing_measuring = 1;
      for (int i = 0; i < N; i++) send_publishes(i, window, 0);
    }
    if (ing_measuring) {
      long outstanding = ing_sent - ing_acked - ing_errs;
      if (tn >= ing_stop && outstanding == 0 && sub_recv >= ing_acked) break;
      if (tn >= ing_stop && outstanding == 0 && tn - t_last_sub > 1.0) break;  // the rest was lost
      if (tn - t_last_ack > stall_s && tn - t_last_sub > stall_s) { status = "stalled"; break; }
    }
    if (n_dead == N) { status = "all_conns_closed"; break; }
    if (n_dead > 0) { status = "conn_closed"; break; }
    if (conns[N].state == ST_DEAD) { status = "sub_closed"; break; }
    if (pub_failed) { status = "pub_conn_lost"; break; }
    if (!ws_ready && tn - t_start > connect_timeout) { status = "connect_timeout"; break; }
    if (ws_ready && !ing_measuring && tn - t_connected > warm_timeout) { status = "no_warmup"; break; }
    if (tn - t_start > max_s) { status = "timeout"; break; }
  }
  if (atomic_exchange(&printed, 1)) _exit(3);
  long cpu_gw1 = proc_cpu_ticks(gw_pid);
  double cpu_self1 = self_cpu();
  double wall = ing_measuring ? now() - ing_t0 : 0;
  double el = ing_measuring ? t_last_sub - ing_t0 : 0;
  long hz = sysconf(_SC_CLK_TCK);
  atomic_store(&stop_all, 1);
  printf("{\"mode\":\"ingest\",\"n\":%d,\"window\":%d,\"secs\":%g,\"status\":\"%s\",", N, window, ingest_secs, status);
  if (t_connected > 0) printf("\"connect_s\":%.3f,", t_connected - t_start);
  else printf("\"connect_s\":null,");
  if (t_warm > 0) printf("\"warm_s\":%.3f,", t_warm - t_connected);
  else printf("\"warm_s\":null,");
  printf("\"topic\":");
  json_str(topic);
  printf(",\"open\":%d,\"warm\":%d,\"pub_connected\":%d,\"sub_connected\":%d,", n_open, n_warm, (int)pub_connected, sub_ok);
  printf("\"published\":%ld,\"sent\":%ld,\"acked\":%ld,\"errors\":%ld,\"delivered\":%ld,\"sub_received\":%ld,"
         "\"expected\":%ld,\"lost\":%ld,\"out_of_order\":%ld,\"bad_frames\":%lu,\"ctl_other\":%lu,\"dead_conns\":%d,",
         ing_sent, ing_sent, ing_acked, ing_errs, sub_recv, sub_recv, ing_acked,
         ing_acked > sub_recv ? ing_acked - sub_recv : 0, sub_ooo, (unsigned long)(sub_bad + bad_frames),
         (unsigned long)ctl_other, n_dead);
  printf("\"elapsed_s\":%.4f,\"msgs_per_s\":%.0f,\"acks_per_s\":%.0f,", el, el > 0 ? sub_recv / el : 0,
         el > 0 ? ing_acked / el : 0);
  print_lat();
  printf("\"gw_cpu_pct\":%.1f,\"client_cpu_pct\":%.1f,\"gw_rss_before_kb\":%.0f,\"gw_rss_kb\":%ld}\n",
         wall > 0 ? 100.0 * (cpu_gw1 - cpu_gw0) / hz / wall : 0, wall > 0 ? 100.0 * (cpu_self1 - cpu_self0) / wall : 0,
         rss_before, proc_rss_kb(gw_pid));
  fflush(stdout);
  _exit(0);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : "";
    if (!strcmp(a, "--mode")) mode = v, i++;
    else if (!strcmp(a, "--port")) ws_port = atoi(v), i++;
    else if (!strcmp(a, "--pub-port")) pub_port = atoi(v), i++;
    else if (!strcmp(a, "--n")) N = atoi(v), i++;
    else if (!strcmp(a, "--m")) M = atol(v), i++;
    else if (!strcmp(a, "--rate")) rate = atof(v), i++;
    else if (!strcmp(a, "--gw-pid")) gw_pid = atoi(v), i++;
    else if (!strcmp(a, "--idle")) idle_secs = atof(v), i++;
    else if (!strcmp(a, "--stall")) stall_s = atof(v), i++;
    else if (!strcmp(a, "--max")) max_s = atof(v), i++;
    else if (!strcmp(a, "--conc")) CONC = atoi(v), i++;
    else if (!strcmp(a, "--warm-ms")) warm_ms = atoi(v), i++;
    else if (!strcmp(a, "--coalesce-us")) coalesce_us = atoi(v), i++;
    else if (!strcmp(a, "--deflate")) deflate_offer = 1;
    else if (!strcmp(a, "--path")) path = v, i++;
    else if (!strcmp(a, "--topic")) topic = v, i++;
    else if (!strcmp(a, "--no-lat")) no_lat = 1;
    else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v), i++;
    else if (!strcmp(a, "--warm-timeout")) warm_timeout = atof(v), i++;
    else if (!strcmp(a, "--topics")) T = atoi(v), i++;
    else if (!strcmp(a, "--pub-topics")) PT = atoi(v), i++;
    else if (!strcmp(a, "--pub-conns")) pub_conns = atoi(v), i++;
    else if (!strcmp(a, "--stalled")) K_stalled = atoi(v), i++;
    else if (!strcmp(a, "--sub-port")) sub_port = atoi(v), i++;
    else if (!strcmp(a, "--window")) window = atoi(v), i++;
    else if (!strcmp(a, "--secs")) ingest_secs = atof(v), i++;
    else if (!strcmp(a, "--size")) PL = atoi(v), i++;
    else { fprintf(stderr, "unknown arg %s\n", a); return 2; }
  }
  ingest = !strcmp(mode, "ingest");
  if (strcmp(mode, "ws") && strcmp(mode, "zmtp") && !ingest) { fprintf(stderr, "--mode ws|zmtp|ingest\n"); return 2; }
  if (PL < 20 || PL > 16000) { fprintf(stderr, "--size must be 20..16000\n"); return 2; }
  if (T < 0 || (T > 0 && !topic)) { fprintf(stderr, "--topics needs --topic\n"); return 2; }
  if (T > 0 && strcmp(mode, "ws")) { fprintf(stderr, "--topics works in --mode ws only\n"); return 2; }
  if (PT <= 0 || PT > T) PT = T;
  if (pub_conns < 1 || pub_conns > 16) { fprintf(stderr, "--pub-conns must be 1..16\n"); return 2; }
  if (K_stalled < 0 || K_stalled >= N) { fprintf(stderr, "--stalled must be in 0..N-1\n"); return 2; }
  if (ingest && (!sub_port || window < 1 || window > 256 || !topic)) {
    fprintf(stderr, "--mode ingest needs --sub-port, --topic and --window 1..256\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);  // a peer that goes away is reported, not a silent death
  if (N < 1 || M < 1) { fprintf(stderr, "--n and --m must be >= 1\n"); return 2; }
  if (topic) {
    size_t tl = strlen(topic);
    if (tl > 4096) { fprintf(stderr, "--topic longer than 4096 bytes\n"); return 2; }
    tfr = malloc(9 + tl);
    if (tl < 256) {
      tfr[0] = 0x01;  // MORE
      tfr[1] = (unsigned char)tl;
      tfr_len = 2;
    } else {
      tfr[0] = 0x03;  // MORE | LONG
      for (int k = 0; k < 8; k++) tfr[1 + k] = (unsigned char)((uint64_t)tl >> (56 - 8 * k));
      tfr_len = 9;
    }
    memcpy(tfr + tfr_len, topic, tl);
    tfr_len += tl;
  }
  if (T > 0) {  // TOPIC0..TOPIC<T-1>, zero-padded to one width: no topic is a prefix of another
    int w = 1;
    for (int x = T - 1; x >= 10; x /= 10) w++;
    size_t tl = strlen(topic) + w;
    if (tl > 60) { fprintf(stderr, "--topic too long for --topics\n"); return 2; }
    tnames = calloc(T, sizeof *tnames);
    tfr_len = 2 + tl;
    tfrs = malloc((size_t)T * tfr_len);
    for (int k = 0; k < T; k++) {
      snprintf(tnames[k], sizeof tnames[k], "%s%0*d", topic, w, k);
      unsigned char *f = tfrs + (size_t)k * tfr_len;
      f[0] = 0x01;  // MORE
      f[1] = (unsigned char)tl;
      memcpy(f + 2, tnames[k], tl);
    }
  }
  if (ingest) {
    size_t k = 0;
    for (const char *q = topic; *q && k < sizeof topic_json - 2; q++) {
      if (*q == '"' || *q == '\\') topic_json[k++] = '\\';
      topic_json[k++] = *q;
    }
    topic_json[k] = 0;
  }
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);

  req_len = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                     path, ws_port, WS_KEY,
                     deflate_offer ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
  zmtp_greeting(zhello);
  zhello_len = 64 + zmtp_ready(zhello + 64, "SUB");  // subscribe "" is sent after the peer's READY

  // driver listener first, so the gateway's SUB can connect
  pub_lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(pub_lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(pub_port)};
  a.sin_addr.s_addr = htonl(0x7f000001);
  if (bind(pub_lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind --pub-port");
  listen(pub_lfd, 16);
  pthread_t th;
  pthread_create(&th, NULL, driver, NULL);

  epfd = epoll_create1(0);
  conns = calloc(N + 1, sizeof *conns);  // + ingest's SUB
  for (int i = 0; i < N; i++) {
    conn_t *c = &conns[i];
    c->kind = strcmp(mode, "zmtp") ? K_WS : K_ZMTP;
    c->topic = T > 0 ? i % T : 0;
    c->next_seq = c->topic;
    c->expect = T <= 0 ? (uint64_t)M
              : c->topic >= PT ? 0  // --pub-topics: no measured message for this client's topic
              : (uint64_t)(M / PT) + ((uint64_t)c->topic < (uint64_t)(M % PT) ? 1 : 0);
    c->stalled = i < K_stalled;
    expected_total += c->expect;
    if (!c->expect) {  // nothing to wait for: done from the start
      c->done = 1;
      n_done++;
      if (!c->stalled) n_done_active++;
    }
  }
  conns[N].kind = K_ZMTP;
  if (ingest) return main_ingest();
  double t_start = now();
  double rss_before = proc_rss_kb(gw_pid);
  int next = 0, inflight = 0;
  double t_connected = 0, t_warm = 0;
  double last_retry = 0;
  int *retry = calloc(N, sizeof(int));
  int nretry = 0;
  struct epoll_event evs[1024];
  long cpu_gw0 = 0;
  double cpu_self0 = 0, t_meas0 = 0;
  int measuring = 0;
  const char *status = "ok";
  double rss_conn = 0, rss_idle = 0;
  double t_rss = 0, t_resumed = 0;
  int resumed = 0;

  for (;;) {
    // keep CONC handshakes in flight
    while (next < N && inflight < CONC) { start_connect(next++); inflight++; }
    double tn = now();
    if (nretry && tn - last_retry > 0.05) {
      for (int k = 0; k < nretry; k++) start_connect(retry[k]);
      nretry = 0;
      last_retry = tn;
    }
    if (coalesce_us && measuring) usleep(coalesce_us);
    int ne = epoll_wait(epfd, evs, 1024, 20);
    tn = now();
    for (int e = 0; e < ne; e++) {
      int i = evs[e].data.u32;
      conn_t *c = &conns[i];
      if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {  // gateway not listening yet: retry
          epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
          close(c->fd);
          c->state = ST_FREE;
          retry[nretry++] = i;
          continue;
        }
        if (!(evs[e].events & EPOLLOUT) && !(evs[e].events & EPOLLIN)) continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        if (c->kind == K_WS) {
          char rq[1024];
          int rl = build_req(i, rq, sizeof rq);
          write_all(c->fd, rq, rl);
          c->state = ST_HS;
        } else {
          write_all(c->fd, zhello, zhello_len);
          c->state = ST_OPEN;
          n_open++;
          inflight--;
        }
        continue;
      }
      int was_hs = c->state == ST_HS;
      handle_readable(i);
      if (was_hs && c->state != ST_HS) inflight--;
    }
    if (!ws_ready && n_open == N) {
      t_connected = tn;
      atomic_store(&ws_ready, 1);
    }
    if (ws_ready && !all_warm && n_warm == N) {
      t_warm = tn;
      if (idle_secs >= 0) {
        // S3: all connected and each got one broadcast; measure RSS
        rss_conn = proc_rss_kb(gw_pid);
        atomic_store(&stop_all, 1);  // driver stops sending warm-ups
        atomic_store(&all_warm, 1);
        double until = now() + idle_secs;
        while (now() < until) {
          int k = epoll_wait(epfd, evs, 1024, 50);
          for (int e = 0; e < k; e++) handle_readable(evs[e].data.u32);
        }
        rss_idle = proc_rss_kb(gw_pid);
        if (n_dead) status = "conn_closed";
        break;
      }
      atomic_store(&all_warm, 1);
    }
    if (!measuring && t0_pub > 0) {
      measuring = 1;
      cpu_gw0 = proc_cpu_ticks(gw_pid);
      cpu_self0 = self_cpu();
      t_meas0 = now();
      t_last_frame = t_meas0;
      for (int i = 0; i < K_stalled; i++)  // --stalled: stop reading; the gateway's buffers fill
        if (conns[i].state == ST_OPEN) epoll_ctl(epfd, EPOLL_CTL_DEL, conns[i].fd, NULL);
    }
    if (measuring && tn - t_rss > 0.05) {  // gateway RSS while each quarter of the burst goes out
      t_rss = tn;
      long r = proc_rss_kb(gw_pid);
      int q = pub_done ? 3 : (int)(4 * (long)pub_sent / M);
      q = q < 0 ? 0 : q > 3 ? 3 : q;
      if (r > rss_q[q]) rss_q[q] = r;
    }
    if (K_stalled && measuring && !resumed && pub_done && n_done_active + n_dead_active >= N - K_stalled) {
      resumed = 1;  // every reading client has all it should: the stalled ones read again
      t_resumed = tn;
      t_last_frame = tn;
      for (int i = 0; i < K_stalled; i++)
        if (conns[i].state == ST_OPEN) {
          struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
          epoll_ctl(epfd, EPOLL_CTL_ADD, conns[i].fd, &ev);
        }
    }
    if (measuring && n_done == N) break;
    // every wait below has a deadline; the first one hit ends the run with its status
    if (n_dead == N) { status = "all_conns_closed"; break; }
    if (n_dead > 0 && !measuring) { status = "closed_before_measure"; break; }
    if (pub_failed) { status = "pub_conn_lost"; break; }
    if (measuring && n_dead_undone > 0 && n_done + n_dead_undone == N) { status = "conn_closed"; break; }
    if (measuring && tn - t_last_frame > stall_s && tn - t0_pub > stall_s) {
      status = n_dead_undone ? "conn_closed" : "stalled";
      break;
    }
    if (!ws_ready && tn - t_start > connect_timeout) { status = "connect_timeout"; break; }
    if (ws_ready && !all_warm && tn - t_connected > warm_timeout) { status = "no_warmup"; break; }
    if (tn - t_start > max_s) { status = "timeout"; break; }
  }
  if (atomic_exchange(&printed, 1)) _exit(3);  // a fatal error in the driver thread won the race
  double t_end = measuring ? (n_done == N ? t_all_done : t_last_frame) : now();
  long cpu_gw1 = proc_cpu_ticks(gw_pid);
  double cpu_self1 = self_cpu();
  double wall = measuring ? now() - t_meas0 : 0;
  long rss_end = proc_rss_kb(gw_pid);
  atomic_store(&stop_all, 1);

  uint64_t expected = expected_total;
  uint64_t unaccounted = 0;  // neither received nor reported missed, on connections still open
  for (int i = 0; i < N; i++) {
    conn_t *c = &conns[i];
    ooo_total += c->ooo;
    if (!c->close_code && c->n1 + c->missed < c->expect) unaccounted += c->expect - c->n1 - c->missed;
  }
  double el = measuring ? t_end - t0_pub : 0;
  printf("{\"mode\":\"%s\",\"n\":%d,\"m\":%ld,\"rate\":%g,\"status\":\"%s\",", mode, N, M, rate, status);
  if (t_connected > 0) printf("\"connect_s\":%.3f,", t_connected - t_start);
  else printf("\"connect_s\":null,");
  if (t_warm > 0) printf("\"warm_s\":%.3f,", t_warm - t_connected);
  else printf("\"warm_s\":null,");
  printf("\"path\":");
  json_str(path);
  printf(",\"topic\":");
  if (topic) json_str(topic);
  else printf("null");
  printf(",\"open\":%d,\"warm\":%d,\"pub_connected\":%d,\"published\":%ld,\"bad_frames\":%lu,", n_open, n_warm,
         (int)pub_connected, (long)pub_sent, (unsigned long)bad_frames);
  if (idle_secs >= 0) {
    if (rss_idle > 0)
      printf("\"dead_conns\":%d,\"rss_before_kb\":%.0f,\"rss_connected_kb\":%.0f,\"rss_idle_kb\":%.0f,\"kb_per_conn\":%.2f}\n",
             n_dead, rss_before, rss_conn, rss_idle, (rss_idle - rss_before) / N);
    else  // never got to the idle phase
      printf("\"dead_conns\":%d,\"rss_before_kb\":%.0f,\"kb_per_conn\":null}\n", n_dead, rss_before);
    fflush(stdout);
    _exit(0);
  }
  long hz = sysconf(_SC_CLK_TCK);
  printf("\"delivered\":%lu,\"expected\":%lu,\"lost\":%ld,\"out_of_order\":%lu,\"dead_conns\":%d,",
         (unsigned long)total1, (unsigned long)expected, (long)(expected - total1), (unsigned long)ooo_total, n_dead);
  printf("\"json_frames\":%lu,\"pub_conns\":%d,", (unsigned long)json_frames, pub_conns);
  if (t1_pub > 0) printf("\"pub_s\":%.4f,", t1_pub - t0_pub);
  else printf("\"pub_s\":null,");  // publishing had not finished
  printf("\"elapsed_s\":%.4f,\"deliveries_per_s\":%.0f,\"msgs_per_s\":%.0f,", el, el > 0 ? total1 / el : 0, el > 0 ? (double)total1 / N / el : 0);
  print_lat();
  printf("\"deflate_conns\":%d,\"inflated_frames\":%lu,", n_deflate, (unsigned long)n_inflated);
  printf("\"topics\":%d,\"stalled\":%d,\"missed\":%lu,\"unaccounted\":%lu,\"gap_frames\":%lu,\"ctl_other\":%lu,"
         "\"closed_1008\":%d,\"closed_other\":%d,\"resume_s\":%.3f,",
         T, K_stalled, (unsigned long)missed_total, (unsigned long)unaccounted, (unsigned long)gap_frames,
         (unsigned long)ctl_other, n_closed_1008, n_closed_other, t_resumed > 0 ? t_resumed - t0_pub : 0.0);
  printf("\"gw_rss_before_kb\":%.0f,\"gw_rss_peak_kb\":%ld,\"gw_rss_q_kb\":[%ld,%ld,%ld,%ld],", rss_before,
         proc_status_kb(gw_pid, "VmHWM:"), rss_q[0], rss_q[1], rss_q[2], rss_q[3]);
  printf("\"gw_cpu_pct\":%.1f,\"client_cpu_pct\":%.1f,\"gw_rss_kb\":%ld}\n",
         wall > 0 ? 100.0 * (cpu_gw1 - cpu_gw0) / hz / wall : 0, wall > 0 ? 100.0 * (cpu_self1 - cpu_self0) / wall : 0,
         rss_end);
  fflush(stdout);
  _exit(0);
}
