/* Read byte ranges of files as fast as one thread can: the read half of a conversion's floor.
 *
 *   gcc -O2 scripts/bench_read_ranges.c -o read-ranges && ./read-ranges RANGES
 *
 * RANGES holds one "START LENGTH PATH" line per range (PATH may contain spaces; the ranges of
 * one file are best listed in file order). Each range is read with pread(2) into one 8 MiB
 * buffer, and one byte per 4 KiB page is summed so the copy cannot be skipped. Prints the bytes
 * read and the sum; exits 2 on any error (a short read included).
 */
#define _FILE_OFFSET_BITS 64
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUF (8u << 20)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s RANGES\n", argv[0]);
        return 2;
    }
    FILE *list = fopen(argv[1], "r");
    char *buf = malloc(BUF);
    if (!list || !buf) {
        perror(argv[1]);
        return 2;
    }
    char line[8192], open_path[8192] = "";
    int fd = -1;
    unsigned long long total = 0, sum = 0;
    while (fgets(line, sizeof line, list)) {
        unsigned long long start, len;
        int at = 0;
        if (sscanf(line, "%llu %llu %n", &start, &len, &at) != 2 || at == 0) {
            fprintf(stderr, "bad line: %s", line);
            return 2;
        }
        char *path = line + at;
        path[strcspn(path, "\n")] = 0;
        if (strcmp(path, open_path) != 0) {
            if (fd >= 0) close(fd);
            fd = open(path, O_RDONLY);
            if (fd < 0) {
                perror(path);
                return 2;
            }
            snprintf(open_path, sizeof open_path, "%s", path);
        }
        while (len > 0) {
            size_t want = len < BUF ? (size_t)len : BUF;
            ssize_t got = pread(fd, buf, want, (off_t)start);
            if (got <= 0) {
                fprintf(stderr, "%s: short read at %llu\n", path, start);
                return 2;
            }
            for (ssize_t i = 0; i < got; i += 4096) sum += (unsigned char)buf[i];
            start += (unsigned long long)got;
            len -= (unsigned long long)got;
            total += (unsigned long long)got;
        }
    }
    printf("%llu bytes read (page sum %llu)\n", total, sum);
    return 0;
}
