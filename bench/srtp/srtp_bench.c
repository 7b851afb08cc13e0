/*
 * SRTP protect/unprotect throughput of libsrtp2 (Debian's libsrtp2-dev), one core: the same
 * cases and the same output as media/benches/srtp.rs, so bench/srtp/run.sh can print both side by
 * side.
 *
 *   gcc -O2 -o srtp_bench srtp_bench.c -lsrtp2 && ./srtp_bench [seconds per case, default 2]
 *
 * Cases: AES-128-GCM (srtp_crypto_policy_set_aes_gcm_128_16_auth) and AES-128-CM-HMAC-SHA1-80
 * (srtp_crypto_policy_set_rtp_default), 160- and 1,200-byte RTP payloads behind a 12-byte header,
 * protect and unprotect. libsrtp works in place, so protect copies the plain packet into a buffer
 * with room for the tag first (part of the timed loop, as Switchyard's API copies too). Unprotect
 * gets fresh packets: chunks of distinct packets are protected untimed by a sender session, then
 * unprotected timed, in place, by a receiver session with the same key (replay window 64), until
 * the case has run its time. Each output line is
 *   libsrtp <profile> <op> <payload bytes> <packets/s> <payload Mbit/s>
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <srtp2/srtp.h>

#define HEADER 12
#define CHUNK 16384
#define BATCH 1024
#define SLOT (HEADER + 1200 + SRTP_MAX_TRAILER_LEN)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void check(srtp_err_status_t st, const char *what) {
    if (st != srtp_err_status_ok) {
        fprintf(stderr, "%s failed: %d\n", what, (int)st);
        exit(1);
    }
}

static srtp_t session(int gcm, int inbound) {
    static unsigned char key[SRTP_MAX_KEY_LEN];
    for (int i = 0; i < (int)sizeof key; i++)
        key[i] = (unsigned char)(i * 7 + 1);
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    if (gcm) {
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&policy.rtp);
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&policy.rtcp);
    } else {
        srtp_crypto_policy_set_rtp_default(&policy.rtp);
        srtp_crypto_policy_set_rtcp_default(&policy.rtcp);
    }
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    policy.key = key;
    policy.window_size = 64;
    policy.allow_repeat_tx = 0;
    policy.next = NULL;
    srtp_t s;
    check(srtp_create(&s, &policy), "srtp_create");
    return s;
}

static void rtp_packet(unsigned char *p, int payload) {
    memset(p, 0, HEADER);
    p[0] = 0x80;
    p[1] = 111;
    p[8] = 0x51; p[9] = 0x57; p[10] = 0x49; p[11] = 0x54;
    for (int i = 0; i < payload; i++)
        p[HEADER + i] = (unsigned char)i;
}

static void set_seq(unsigned char *p, uint64_t seq) {
    uint32_t ts = (uint32_t)seq * 160u;
    p[2] = (unsigned char)(seq >> 8); p[3] = (unsigned char)seq;
    p[4] = ts >> 24; p[5] = ts >> 16; p[6] = ts >> 8; p[7] = ts;
}

static uint64_t bench_protect(int gcm, int payload, double min, double *elapsed) {
    srtp_t s = session(gcm, 0);
    unsigned char plain[SLOT], buf[SLOT];
    rtp_packet(plain, payload);
    uint64_t seq = 0;
    double start = now();
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            set_seq(plain, seq++);
            memcpy(buf, plain, HEADER + payload);
            int len = HEADER + payload;
            check(srtp_protect(s, buf, &len), "srtp_protect");
        }
        *elapsed = now() - start;
        if (*elapsed >= min)
            break;
    }
    srtp_dealloc(s);
    return seq;
}

static uint64_t bench_unprotect(int gcm, int payload, double min, double *elapsed) {
    srtp_t tx = session(gcm, 0), rx = session(gcm, 1);
    unsigned char *chunk = malloc((size_t)CHUNK * SLOT);
    int *lens = malloc(sizeof(int) * CHUNK);
    unsigned char plain[SLOT];
    rtp_packet(plain, payload);
    uint64_t seq = 0, done = 0;
    double timed = 0;
    while (timed < min) {
        for (int i = 0; i < CHUNK; i++) {
            unsigned char *p = chunk + (size_t)i * SLOT;
            set_seq(plain, seq++);
            memcpy(p, plain, HEADER + payload);
            lens[i] = HEADER + payload;
            check(srtp_protect(tx, p, &lens[i]), "srtp_protect");
        }
        double start = now();
        for (int i = 0; i < CHUNK; i++) {
            check(srtp_unprotect(rx, chunk + (size_t)i * SLOT, &lens[i]), "srtp_unprotect");
        }
        timed += now() - start;
        done += CHUNK;
        if (lens[0] != HEADER + payload) {
            fprintf(stderr, "unprotected length %d\n", lens[0]);
            exit(1);
        }
    }
    *elapsed = timed;
    free(chunk);
    free(lens);
    srtp_dealloc(tx);
    srtp_dealloc(rx);
    return done;
}

int main(int argc, char **argv) {
    double min = argc > 1 ? atof(argv[1]) : 2.0;
    if (min < 1.0)
        min = 1.0;
    check(srtp_init(), "srtp_init");
    const int payloads[2] = {160, 1200};
    for (int gcm = 1; gcm >= 0; gcm--) {
        const char *label = gcm ? "AES-128-GCM" : "AES-128-CM-HMAC-SHA1-80";
        for (int k = 0; k < 2; k++) {
            for (int op = 0; op < 2; op++) {
                double elapsed = 0;
                uint64_t n = op == 0 ? bench_protect(gcm, payloads[k], min, &elapsed)
                                     : bench_unprotect(gcm, payloads[k], min, &elapsed);
                double pps = n / elapsed;
                printf("libsrtp %s %s %d %.0f %.1f\n", label, op == 0 ? "protect" : "unprotect",
                       payloads[k], pps, pps * payloads[k] * 8 / 1e6);
                fflush(stdout);
            }
        }
    }
    srtp_shutdown();
    return 0;
}
