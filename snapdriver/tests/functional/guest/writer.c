/*
 * Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License. You may obtain
 * a copy of the License at
 *
 *      http://www.apache.org/licenses/LICENSE-2.0
 *
 * Unless required by applicable law or agreed to in writing, software
 * distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 * WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 * License for the specific language governing permissions and limitations
 * under the License.
 */

/*
 * Sequential, verifiable writer for the snapdriver test guest.
 *
 * Block i (i = 0, 1, 2, ...) is written at byte offset i * 4096 and holds
 * sequence number i + 1.  Every write completes (O_DIRECT | O_DSYNC, or
 * pwrite + fdatasync when O_DIRECT is refused) before the next one starts,
 * so at any instant the device holds exactly the blocks 1..N: a
 * point-in-time copy of it must show a prefix, never a hole.  When the
 * device is full the writer stops writing (no wrap-around) and keeps
 * reporting.
 *
 * Block layout (little endian), mirrored by
 * snapdriver/tests/functional/writer_guest.py:
 *
 *   0   8  magic "SNAPWRT1"
 *   8   8  sequence number (i + 1)
 *   16  8  run id (random per writer start; all blocks of a prefix share it)
 *   24  4  CRC-32 (zlib/IEEE) of bytes 0..23 followed by bytes 32..4095
 *   28  4  zero
 *   32  .. filler: 64-bit words, word k = mix(seq, run id, k)
 *
 * Progress goes to stdout every interval as "LABEL seq=N" where N is the
 * last completed block, so the on-disk N is never below a printed N; once
 * full, "LABEL seq=N full" every 5 intervals.
 *
 * With -x (scatter) write i goes to block mix(i + 1, run id) mod BLOCKS
 * instead of block i, and never stops: a load that rewrites allocated data
 * all over the device, ahead of and behind any front-to-back copy.  The
 * i-th write still holds sequence number i + 1.
 *
 * Usage: writer [-r BLOCKS_PER_S] [-l LABEL] [-s MAX_BYTES] [-i MS] [-w]
 *               [-x] PATH
 *   -r  rate limit in blocks per second (0: unlimited; default 2000)
 *   -l  label of progress lines (default "writer")
 *   -s  size limit in bytes (needed for regular files; for block devices
 *       the device size is the default)
 *   -i  progress interval in milliseconds (default 500)
 *   -w  wrap around when full instead of stopping: only for a load that is
 *       not verified as a prefix (the freezable filesystem's writer)
 *   -x  scattered offsets (see above); implies -w
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WBLOCK 4096
#define MAGIC "SNAPWRT1"

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const unsigned char *buf, size_t len)
{
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *buf++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t mix64(uint64_t z)
{
    /* splitmix64 finaliser */
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fill_block(unsigned char *b, uint64_t seq, uint64_t run_id)
{
    uint64_t base = mix64(seq ^ run_id);
    uint32_t crc;

    memset(b, 0, 32);
    memcpy(b, MAGIC, 8);
    put_le64(b + 8, seq);
    put_le64(b + 16, run_id);
    for (int k = 32; k < WBLOCK; k += 8)
        put_le64(b + k, base + (uint64_t)k);
    crc = crc_update(0, b, 24);
    crc = crc_update(crc, b + 32, WBLOCK - 32);
    put_le32(b + 24, crc);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_for(double s)
{
    struct timespec ts;
    if (s <= 0)
        return;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static uint64_t make_run_id(void)
{
    uint64_t id = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        if (read(fd, &id, sizeof(id)) != (ssize_t)sizeof(id))
            id = 0;
        close(fd);
    }
    if (id == 0)
        id = mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32));
    return id ? id : 1;
}

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [-r BLOCKS_PER_S] [-l LABEL] [-s MAX_BYTES] "
            "[-i MS] [-w] [-x] PATH\n", prog);
    exit(2);
}

int main(int argc, char **argv)
{
    double rate = 2000, interval = 0.5;
    const char *label = "writer", *path;
    unsigned long long limit = 0;
    int wrap = 0, scatter = 0, opt, fd, direct = 1;
    unsigned char *buf;
    uint64_t run_id, nblocks, block, seq = 0;
    struct stat st;
    double start, next_report;

    while ((opt = getopt(argc, argv, "r:l:s:i:wx")) != -1) {
        switch (opt) {
        case 'r': rate = strtod(optarg, NULL); break;
        case 'l': label = optarg; break;
        case 's': limit = strtoull(optarg, NULL, 0); break;
        case 'i': interval = strtod(optarg, NULL) / 1000.0; break;
        case 'w': wrap = 1; break;
        case 'x': scatter = wrap = 1; break;
        default: usage(argv[0]);
        }
    }
    if (optind != argc - 1)
        usage(argv[0]);
    path = argv[optind];
    setvbuf(stdout, NULL, _IOLBF, 0);
    crc_init();

    fd = open(path, O_WRONLY | O_CREAT | O_DIRECT | O_DSYNC, 0644);
    if (fd < 0 && errno == EINVAL) {
        direct = 0;
        fd = open(path, O_WRONLY | O_CREAT | O_DSYNC, 0644);
    }
    if (fd < 0) {
        printf("%s error: open %s: %s\n", label, path, strerror(errno));
        return 1;
    }
    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        unsigned long long dev_size = 0;
        if (ioctl(fd, BLKGETSIZE64, &dev_size) == 0 &&
            (limit == 0 || dev_size < limit))
            limit = dev_size;
    }
    nblocks = limit / WBLOCK;
    if (nblocks == 0) {
        printf("%s error: %s: no size (use -s)\n", label, path);
        return 1;
    }
    if (posix_memalign((void **)&buf, WBLOCK, WBLOCK) != 0) {
        printf("%s error: out of memory\n", label);
        return 1;
    }
    run_id = make_run_id();
    printf("%s start run=%016" PRIx64 " path=%s blocks=%" PRIu64
           " rate=%g direct=%d scatter=%d\n", label, run_id, path, nblocks,
           rate, direct, scatter);

    start = now();
    next_report = start + interval;
    for (;;) {
        double t = now();

        if (!wrap && seq >= nblocks) {
            /* Full: never wrap; keep reporting, slower. */
            printf("%s seq=%" PRIu64 " full\n", label, seq);
            sleep_for(5 * interval);
            continue;
        }
        if (t >= next_report) {
            printf("%s seq=%" PRIu64 "\n", label, seq);
            next_report = t + interval;
        }
        if (rate > 0) {
            double due = start + seq / rate;
            if (due - t > 0.0) {
                double wake = due < next_report ? due : next_report;
                sleep_for(wake - t);
                continue;
            }
            if (t - due > 0.25) {
                /* Far behind (e.g. the VM was paused): no burst. */
                start = t - seq / rate;
            }
        }
        fill_block(buf, seq + 1, run_id);
        block = scatter ? mix64((seq + 1) ^ run_id) % nblocks : seq % nblocks;
        if (pwrite(fd, buf, WBLOCK, (off_t)(block * WBLOCK)) != WBLOCK ||
            (!direct && fdatasync(fd) != 0)) {
            printf("%s error: write seq=%" PRIu64 ": %s\n", label, seq + 1,
                   strerror(errno));
            sleep_for(1.0);
            continue;
        }
        seq++;
    }
}
