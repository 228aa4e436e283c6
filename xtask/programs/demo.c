/*
 * leak's built-in demo: a toy request loop with one leak.
 *
 * parse_request() copies each request's headers and forgets the copy of one of them:
 * the leak. render_response() allocates a response buffer and frees it: not a leak.
 * cache_session() keeps the last 64 sessions in a ring and frees what it evicts: memory that
 * is held, but bounded.
 *
 * Built with frame pointers so that the stacks show the whole call chain.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SESSIONS 64

static char *sessions[SESSIONS];
static unsigned long served;

__attribute__((noinline)) static char *copy_header(const char *value) {
    return strdup(value);
}

__attribute__((noinline)) static size_t parse_request(unsigned long id) {
    char header[128];
    snprintf(header, sizeof header, "X-Request-Id: %lu; User-Agent: demo-client/1.0", id);
    char *agent = copy_header(header);
    char *trace = malloc(512);          /* leaked: nobody frees the trace context */
    snprintf(trace, 512, "trace-%lu", id);
    size_t n = strlen(agent) + strlen(trace);
    free(agent);
    return n;
}

__attribute__((noinline)) static void render_response(size_t n) {
    char *body = malloc(4096 + n);
    memset(body, 'x', 4096 + n);
    free(body);
}

__attribute__((noinline)) static void cache_session(unsigned long id) {
    size_t slot = id % SESSIONS;
    free(sessions[slot]);
    sessions[slot] = calloc(1, 256);
}

__attribute__((noinline)) static void handle_request(unsigned long id) {
    size_t n = parse_request(id);
    render_response(n);
    cache_session(id);
    served++;
}

int main(void) {
    printf("leak-demo: pid %d serving requests (Ctrl-C to stop)\n", getpid());
    fflush(stdout);
    struct timespec pause = {0, 5 * 1000 * 1000};
    for (unsigned long id = 0;; id++) {
        handle_request(id);
        nanosleep(&pause, NULL);
    }
}
