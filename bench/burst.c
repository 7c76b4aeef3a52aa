/* burst: COUNT connections opened at the same moment, each sending one distinct GitLab push delivery
 * (X-Gitlab-Event-UUID <prefix>-<n>); prints, per connection, "ok <microseconds to the status line>" or
 * "reset|refused|timeout|status <code>|error <errno>". A C client so its own CPU stays far below the
 * server's on a small machine (bench/webhook.py compiles it with cc).
 * usage: burst HOST PORT COUNT FIRST TOKEN PREFIX BRANCH
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXC 4096
#define TIMEOUT_US 10000000LL

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: burst HOST PORT COUNT FIRST TOKEN PREFIX BRANCH\n"); return 2; }
    const char *host = argv[1], *token = argv[5], *prefix = argv[6], *branch = argv[7];
    int port = atoi(argv[2]), count = atoi(argv[3]);
    long first = atol(argv[4]);
    if (count < 1 || count > MAXC) { fprintf(stderr, "burst: COUNT 1..%d\n", MAXC); return 2; }
    static char req[MAXC][1024];
    static int len[MAXC], state[MAXC];  /* 0 connecting/sending, 1 reading, 2 settled */
    static long long took[MAXC];
    static char result[MAXC][32];
    struct pollfd fds[MAXC];
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, host, &addr.sin_addr);
    for (int i = 0; i < count; i++) {
        char body[512];
        long n = first + i;
        int blen = snprintf(body, sizeof body,
            "{\"object_kind\": \"push\", \"ref\": \"refs/heads/%s\", \"before\": \"%040d\", "
            "\"after\": \"%040lx\", \"checkout_sha\": \"%040lx\", \"user_username\": \"bench\", "
            "\"project\": {\"id\": 1, \"path_with_namespace\": \"team/app\"}}", branch, 0, n, n);
        len[i] = snprintf(req[i], sizeof req[i],
            "POST / HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nX-Gitlab-Event: Push Hook\r\n"
            "X-Gitlab-Token: %s\r\nX-Gitlab-Event-UUID: %s-%ld\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
            host, port, token, prefix, n, blen, body);
    }
    long long started = now_us();
    for (int i = 0; i < count; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        fcntl(s, F_SETFL, O_NONBLOCK);
        connect(s, (struct sockaddr *)&addr, sizeof addr);
        fds[i].fd = s;
        fds[i].events = POLLOUT;
    }
    int left = count;
    while (left > 0) {
        long long wait = TIMEOUT_US - (now_us() - started);
        if (wait <= 0) break;
        int got = poll(fds, (nfds_t)count, (int)(wait / 1000) + 1);
        if (got < 0 && errno != EINTR) break;
        for (int i = 0; i < count; i++) {
            if (state[i] == 2 || !fds[i].revents) continue;
            int err = 0;
            if (state[i] == 0) {
                ssize_t w = send(fds[i].fd, req[i], (size_t)len[i], MSG_NOSIGNAL);
                if (w == len[i]) { state[i] = 1; fds[i].events = POLLIN; continue; }
                err = w < 0 ? errno : EIO;
            } else {
                char buf[256];
                ssize_t r = recv(fds[i].fd, buf, sizeof buf - 1, 0);
                if (r > 0) {
                    buf[r] = 0;
                    took[i] = now_us() - started;
                    int code = 0;
                    sscanf(buf, "HTTP/%*s %d", &code);
                    if (code == 200) snprintf(result[i], sizeof result[i], "ok");
                    else snprintf(result[i], sizeof result[i], "status %d", code);
                } else {
                    err = r == 0 ? ECONNRESET : errno;
                }
            }
            if (err == EAGAIN) continue;
            if (err == ECONNRESET || err == EPIPE) snprintf(result[i], sizeof result[i], "reset");
            else if (err == ECONNREFUSED) snprintf(result[i], sizeof result[i], "refused");
            else if (err) snprintf(result[i], sizeof result[i], "error %d", err);
            state[i] = 2;
            fds[i].fd = -fds[i].fd - 1;  /* poll ignores negative fds */
            close(-fds[i].fd - 1);
            left--;
        }
    }
    for (int i = 0; i < count; i++) {
        if (state[i] != 2) { printf("timeout\n"); close(fds[i].fd); }
        else if (strcmp(result[i], "ok") == 0) printf("ok %lld\n", took[i]);
        else printf("%s\n", result[i]);
    }
    return 0;
}
