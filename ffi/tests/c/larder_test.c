/*
 * The C ABI as a C program uses it: every call, every result code a caller can meet
 * from C, and a reopen of a persisted store. Built with -Wall -Werror (and once under
 * AddressSanitizer) by ffi/tests/c_program.rs, which runs it.
 *
 * Usage: larder_test SCRATCH_DIR   (an empty directory the test may fill)
 */
#include "larder.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int failures = 0;

#define EXPECT(cond)                                                               \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);    \
            failures++;                                                            \
        }                                                                          \
    } while (0)

/* A call's result is what the test expects, else print both and the last error. */
#define CHECK(call, want)                                                          \
    do {                                                                           \
        larder_result got_ = (call);                                               \
        if (got_ != (want)) {                                                      \
            char msg_[256];                                                        \
            larder_last_error_message(msg_, sizeof msg_, NULL);                    \
            fprintf(stderr, "%s:%d: %s returned %u, expected %s (%u); last error: %s\n", \
                    __FILE__, __LINE__, #call, (unsigned)got_, #want, (unsigned)(want), msg_); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

#define KEY(s) (const uint8_t *)(s), strlen(s)

static larder_store *open_store(const char *root, uint64_t memory) {
    larder_config *config = larder_config_new();
    CHECK(larder_config_set_memory_bytes(config, memory), LARDER_OK);
    CHECK(larder_config_set_storage_root(config, root), LARDER_OK);
    CHECK(larder_config_set_lease_ttl_ms(config, 60000), LARDER_OK);
    larder_store *store = NULL;
    CHECK(larder_store_open(config, &store), LARDER_OK);
    larder_config_free(config);
    if (store == NULL) {
        fprintf(stderr, "cannot open a store on %s\n", root);
        exit(1);
    }
    return store;
}

static void test_messages(void) {
    char buf[128];
    size_t n = 0;
    CHECK(larder_result_message(LARDER_NOT_FOUND, buf, sizeof buf, &n), LARDER_OK);
    EXPECT(strcmp(buf, "no object under this key") == 0 && n == strlen(buf));
    /* Every defined code has its own message; others are "unknown result code". */
    int known = 0;
    for (unsigned code = 0; code < 40; code++) {
        CHECK(larder_result_message(code, buf, sizeof buf, NULL), LARDER_OK);
        EXPECT(strlen(buf) > 0);
        known += strcmp(buf, "unknown result code") != 0;
    }
    EXPECT(known == 24);
    CHECK(larder_config_set(NULL, "memory", "1MiB"), LARDER_NULL_PARAMETER);
    CHECK(larder_last_error_message(buf, sizeof buf, NULL), LARDER_OK);
    EXPECT(strstr(buf, "null") != NULL);
    CHECK(larder_result_message(LARDER_OK, buf, 4, &n), LARDER_OK);
    EXPECT(n == 3 && strcmp(buf, "suc") == 0);
    CHECK(larder_result_message(LARDER_OK, NULL, 10, &n), LARDER_NULL_PARAMETER);
    CHECK(larder_last_error_message(buf, 0, &n), LARDER_NULL_PARAMETER);
}

static void test_config(const char *scratch) {
    larder_config *config = larder_config_new();
    EXPECT(config != NULL);
    CHECK(larder_config_set(config, "memory", "64MiB"), LARDER_OK);
    CHECK(larder_config_set(config, "lease_ttl", "500ms"), LARDER_OK);
    CHECK(larder_config_set(config, "memroy", "64MiB"), LARDER_CONFIG);
    char msg[256];
    CHECK(larder_last_error_message(msg, sizeof msg, NULL), LARDER_OK);
    EXPECT(strstr(msg, "unknown setting") != NULL);
    CHECK(larder_config_set(config, "memory", "lots"), LARDER_CONFIG);
    CHECK(larder_config_set(config, NULL, "1"), LARDER_NULL_PARAMETER);
    CHECK(larder_config_set(config, "memory", "\xff\xfe"), LARDER_INVALID_PARAMETER);
    CHECK(larder_config_set(config, "cluster", "\xff\xfe"), LARDER_INVALID_PARAMETER);
    CHECK(larder_config_set(NULL, "memory", "1MiB"), LARDER_NULL_PARAMETER);
    CHECK(larder_config_set_memory_bytes(NULL, 1), LARDER_NULL_PARAMETER);
    CHECK(larder_config_set_storage_root(NULL, "/"), LARDER_NULL_PARAMETER);
    CHECK(larder_config_set_lease_ttl_ms(NULL, 1), LARDER_NULL_PARAMETER);
    CHECK(larder_config_set_master(config, NULL), LARDER_OK);
    CHECK(larder_config_set_master(config, "embedded"), LARDER_OK);
    CHECK(larder_config_set_master(NULL, NULL), LARDER_NULL_PARAMETER);

    /* A configuration the store refuses is LARDER_CONFIG at open, and the handle is
     * not written. */
    larder_store *store = NULL;
    CHECK(larder_config_set_memory_bytes(config, 1000), LARDER_OK);
    CHECK(larder_store_open(config, &store), LARDER_CONFIG);
    EXPECT(store == NULL);
    CHECK(larder_config_set_memory_bytes(config, 4 << 20), LARDER_OK);
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no-such-directory", scratch);
    CHECK(larder_config_set_storage_root(config, missing), LARDER_OK);
    larder_result r = larder_store_open(config, &store);
    EXPECT(r == LARDER_CONFIG || r == LARDER_STORAGE);
    EXPECT(store == NULL);
    CHECK(larder_store_open(NULL, &store), LARDER_NULL_PARAMETER);
    CHECK(larder_store_open(config, NULL), LARDER_NULL_PARAMETER);
    larder_config_free(config);
    larder_config_free(NULL);

    larder_config *from_env = NULL;
    CHECK(larder_config_from_env(&from_env), LARDER_OK);
    EXPECT(from_env != NULL);
    larder_config_free(from_env);
    CHECK(larder_config_from_env(NULL), LARDER_NULL_PARAMETER);
}

static void test_data_calls(larder_store *store) {
    static uint8_t value[256 << 10];
    for (size_t i = 0; i < sizeof value; i++) value[i] = (uint8_t)(i * 7 + 1);
    CHECK(larder_put(store, KEY("c/one"), value, sizeof value), LARDER_OK);
    CHECK(larder_put(store, KEY("c/one"), value, 10), LARDER_ALREADY_EXISTS);
    CHECK(larder_put(store, KEY("c/empty"), value, 0), LARDER_EMPTY_VALUE);
    CHECK(larder_put(store, KEY(""), value, 10), LARDER_INVALID_KEY);
    CHECK(larder_put(store, KEY("c/null"), NULL, 10), LARDER_NULL_PARAMETER);
    CHECK(larder_put(store, NULL, 5, value, 10), LARDER_NULL_PARAMETER);
    CHECK(larder_put(NULL, KEY("c/x"), value, 10), LARDER_NULL_PARAMETER);
    static uint8_t huge[9 << 20];
    CHECK(larder_put(store, KEY("c/huge"), huge, sizeof huge), LARDER_TOO_LARGE);

    static uint8_t out[256 << 10];
    size_t len = 0;
    CHECK(larder_get_into(store, KEY("c/one"), out, sizeof out, &len), LARDER_OK);
    EXPECT(len == sizeof value && memcmp(out, value, len) == 0);
    len = 0;
    CHECK(larder_get_into(store, KEY("c/one"), out, 100, &len), LARDER_BUFFER_TOO_SMALL);
    EXPECT(len == sizeof value);
    CHECK(larder_get_into(store, KEY("c/missing"), out, sizeof out, &len), LARDER_NOT_FOUND);
    CHECK(larder_get_into(store, KEY("c/one"), out, sizeof out, NULL), LARDER_NULL_PARAMETER);
    CHECK(larder_get_into(store, KEY("c/one"), NULL, 10, &len), LARDER_NULL_PARAMETER);

    uint64_t size = 0;
    CHECK(larder_get_size(store, KEY("c/one"), &size), LARDER_OK);
    EXPECT(size == sizeof value);
    CHECK(larder_get_size(store, KEY("c/missing"), &size), LARDER_NOT_FOUND);
    CHECK(larder_get_size(store, KEY("c/one"), NULL), LARDER_NULL_PARAMETER);
    bool exists = false;
    CHECK(larder_exists(store, KEY("c/one"), &exists), LARDER_OK);
    EXPECT(exists);
    CHECK(larder_exists(store, KEY("c/missing"), &exists), LARDER_OK);
    EXPECT(!exists);
    CHECK(larder_exists(store, KEY("c/one"), NULL), LARDER_NULL_PARAMETER);

    /* put_parts: the concatenation reads back as one value. */
    larder_slice parts[3] = {{value, 1000}, {value + 1000, 24}, {value + 1024, 3072}};
    CHECK(larder_put_parts(store, KEY("c/parts"), parts, 3), LARDER_OK);
    CHECK(larder_get_into(store, KEY("c/parts"), out, sizeof out, &len), LARDER_OK);
    EXPECT(len == 4096 && memcmp(out, value, 4096) == 0);
    larder_slice bad_part[1] = {{NULL, 5}};
    CHECK(larder_put_parts(store, KEY("c/bad"), bad_part, 1), LARDER_NULL_PARAMETER);
    CHECK(larder_put_parts(store, KEY("c/bad"), NULL, 1), LARDER_NULL_PARAMETER);

    /* A read leases the object: a remove without force is refused. */
    CHECK(larder_remove(store, KEY("c/one"), false), LARDER_HAS_LEASE);
    CHECK(larder_remove(store, KEY("c/one"), true), LARDER_OK);
    CHECK(larder_remove(store, KEY("c/one"), true), LARDER_NOT_FOUND);
    CHECK(larder_remove(store, NULL, 3, true), LARDER_NULL_PARAMETER);
}

static void test_batches(larder_store *store) {
    static uint8_t a[64 << 10], b[128 << 10];
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    larder_slice keys[3] = {{(const uint8_t *)"b/a", 3}, {(const uint8_t *)"b/b", 3}, {(const uint8_t *)"b/a", 3}};
    larder_slice values[3] = {{a, sizeof a}, {b, sizeof b}, {b, sizeof b}};
    larder_result results[3];
    CHECK(larder_batch_put(store, keys, values, 3, results), LARDER_ALREADY_EXISTS);
    EXPECT(results[0] == LARDER_OK && results[1] == LARDER_OK && results[2] == LARDER_ALREADY_EXISTS);
    CHECK(larder_batch_put(store, keys, values, 0, NULL), LARDER_OK);
    CHECK(larder_batch_put(store, NULL, values, 3, results), LARDER_NULL_PARAMETER);

    static uint8_t out_a[64 << 10], out_b[64 << 10];
    larder_slice get_keys[3] = {{(const uint8_t *)"b/a", 3}, {(const uint8_t *)"b/b", 3}, {(const uint8_t *)"b/none", 6}};
    larder_mut_slice bufs[3] = {{out_a, sizeof out_a}, {out_b, sizeof out_b}, {out_b, 0}};
    size_t lens[3];
    CHECK(larder_batch_get_into(store, get_keys, bufs, 3, lens, results), LARDER_BUFFER_TOO_SMALL);
    EXPECT(results[0] == LARDER_OK && lens[0] == sizeof a && memcmp(out_a, a, sizeof a) == 0);
    EXPECT(results[1] == LARDER_BUFFER_TOO_SMALL && lens[1] == sizeof b);
    EXPECT(results[2] == LARDER_NOT_FOUND);
    CHECK(larder_batch_get_into(store, get_keys, bufs, 3, NULL, results), LARDER_NULL_PARAMETER);

    bool exists[3];
    CHECK(larder_batch_exists(store, get_keys, 3, exists, results), LARDER_OK);
    EXPECT(exists[0] && exists[1] && !exists[2]);
    CHECK(larder_batch_exists(store, get_keys, 3, NULL, results), LARDER_NULL_PARAMETER);

    CHECK(larder_batch_remove(store, get_keys, 3, false, results), LARDER_HAS_LEASE);
    /* b/b was never read (its buffer was too small: no lease), so it went. */
    EXPECT(results[0] == LARDER_HAS_LEASE && results[1] == LARDER_OK && results[2] == LARDER_NOT_FOUND);
    CHECK(larder_batch_remove(store, get_keys, 1, true, results), LARDER_OK);
    CHECK(larder_batch_remove(store, get_keys, 1, true, NULL), LARDER_NULL_PARAMETER);
}

static void test_buffers(larder_store *store) {
    static uint8_t pool[1 << 20];
    CHECK(larder_register_buffer(store, pool, sizeof pool), LARDER_OK);
    CHECK(larder_register_buffer(store, pool + 4096, 4096), LARDER_OVERLAPS_REGISTERED);
    CHECK(larder_register_buffer(store, pool, 0), LARDER_INVALID_PARAMETER);
    CHECK(larder_register_buffer(store, NULL, 10), LARDER_NULL_PARAMETER);
    CHECK(larder_unregister_buffer(store, pool + 1), LARDER_NOT_REGISTERED);
    CHECK(larder_unregister_buffer(store, pool), LARDER_OK);
    CHECK(larder_unregister_buffer(store, pool), LARDER_NOT_REGISTERED);
    CHECK(larder_unregister_buffer(store, NULL), LARDER_NULL_PARAMETER);
}

/* Memory full of leased objects that are not yet on SSD cannot take another put. */
static void test_no_space(const char *scratch) {
    larder_config *config = larder_config_new();
    CHECK(larder_config_set_memory_bytes(config, 1 << 20), LARDER_OK);
    CHECK(larder_config_set_lease_ttl_ms(config, 600000), LARDER_OK);
    larder_store *store = NULL;
    CHECK(larder_store_open(config, &store), LARDER_OK);
    larder_config_free(config);
    (void)scratch;
    static uint8_t v[256 << 10], out[256 << 10];
    memset(v, 'v', sizeof v);
    larder_result r = LARDER_OK;
    for (int i = 0; i < 8 && r == LARDER_OK; i++) {
        char key[32];
        snprintf(key, sizeof key, "full/%d", i);
        r = larder_put(store, KEY(key), v, sizeof v);
        size_t len;
        if (r == LARDER_OK) CHECK(larder_get_into(store, KEY(key), out, sizeof out, &len), LARDER_OK);
    }
    EXPECT(r == LARDER_NO_SPACE);
    CHECK(larder_store_close(store), LARDER_OK);
    larder_store_free(store);
}

/* Finds the one bucket file under dir (recursively) into path. */
static int find_bucket(const char *dir, char *path, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        size_t n = strlen(e->d_name);
        struct stat st;
        if (stat(sub, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            found = find_bucket(sub, path, cap);
        } else if (n > 7 && strcmp(e->d_name + n - 7, ".bucket") == 0) {
            snprintf(path, cap, "%s", sub);
            found = 1;
        }
    }
    closedir(d);
    return found;
}

/* A byte flipped inside a persisted value is LARDER_CORRUPTED, never other bytes. */
static void test_corrupted(const char *scratch) {
    char root[512];
    snprintf(root, sizeof root, "%s/corrupt", scratch);
    mkdir(root, 0755);
    larder_store *store = open_store(root, 4 << 20);
    static uint8_t v[256 << 10];
    memset(v, 0xab, sizeof v);
    CHECK(larder_put(store, KEY("x/victim"), v, sizeof v), LARDER_OK);
    CHECK(larder_store_close(store), LARDER_OK);
    larder_store_free(store);

    char bucket[1024];
    EXPECT(find_bucket(root, bucket, sizeof bucket));
    FILE *f = fopen(bucket, "r+b");
    EXPECT(f != NULL);
    if (!f) return;
    long at = -1;
    for (long i = 0, c; (c = fgetc(f)) != EOF; i++) {
        if (c == 0xab) { at = i; break; }
    }
    EXPECT(at >= 0);
    fseek(f, at + (long)sizeof v / 2, SEEK_SET);
    fputc(0x00, f);
    fclose(f);

    store = open_store(root, 4 << 20);
    static uint8_t out[256 << 10];
    size_t len = 0;
    CHECK(larder_get_into(store, KEY("x/victim"), out, sizeof out, &len), LARDER_CORRUPTED);
    CHECK(larder_get_into(store, KEY("x/victim"), out, sizeof out, &len), LARDER_NOT_FOUND);
    larder_stats stats;
    CHECK(larder_store_stats(store, &stats), LARDER_OK);
    EXPECT(stats.crc_failures == 1);
    larder_store_free(store); /* free closes an open store */
}

/* What was acknowledged and flushed is there after a close and a reopen. */
static void test_reopen(const char *scratch) {
    char root[512];
    snprintf(root, sizeof root, "%s/reopen", scratch);
    mkdir(root, 0755);
    larder_store *store = open_store(root, 8 << 20);
    static uint8_t v[64][64 << 10];
    for (int i = 0; i < 64; i++) {
        memset(v[i], i + 1, sizeof v[i]);
        char key[32];
        snprintf(key, sizeof key, "reopen/%d", i);
        CHECK(larder_put(store, KEY(key), v[i], sizeof v[i]), LARDER_OK);
    }
    CHECK(larder_flush(store), LARDER_OK);
    test_data_calls(store);
    test_batches(store);
    test_buffers(store);

    larder_stats stats;
    CHECK(larder_store_stats(store, &stats), LARDER_OK);
    EXPECT(stats.memory_capacity == 8 << 20 && stats.objects >= 64 && stats.persisted >= 64);
    CHECK(larder_store_stats(store, NULL), LARDER_NULL_PARAMETER);

    CHECK(larder_store_close(store), LARDER_OK);
    size_t len;
    static uint8_t out[64 << 10];
    CHECK(larder_get_into(store, KEY("reopen/0"), out, sizeof out, &len), LARDER_CLOSED);
    CHECK(larder_put(store, KEY("reopen/late"), out, 10), LARDER_CLOSED);
    CHECK(larder_store_close(store), LARDER_CLOSED);
    CHECK(larder_flush(store), LARDER_CLOSED);
    larder_store_free(store);

    store = open_store(root, 8 << 20);
    CHECK(larder_store_stats(store, &stats), LARDER_OK);
    EXPECT(stats.recovered >= 64);
    for (int i = 0; i < 64; i++) {
        char key[32];
        snprintf(key, sizeof key, "reopen/%d", i);
        len = 0;
        CHECK(larder_get_into(store, KEY(key), out, sizeof out, &len), LARDER_OK);
        EXPECT(len == sizeof v[i] && memcmp(out, v[i], len) == 0);
    }
    /* The 64 just read are leased: only c/parts (unread since the reopen) goes without
     * force. */
    uint64_t removed = 0;
    CHECK(larder_remove_all(store, false, &removed), LARDER_OK);
    EXPECT(removed == 1);
    CHECK(larder_remove_all(store, true, &removed), LARDER_OK);
    EXPECT(removed == 64);
    CHECK(larder_remove_all(store, true, NULL), LARDER_OK);
    bool exists = true;
    CHECK(larder_exists(store, KEY("reopen/3"), &exists), LARDER_OK);
    EXPECT(!exists);
    CHECK(larder_store_close(store), LARDER_OK);
    larder_store_free(store);
    larder_store_free(NULL);
    CHECK(larder_store_close(NULL), LARDER_NULL_PARAMETER);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    test_messages();
    test_config(argv[1]);
    test_no_space(argv[1]);
    test_reopen(argv[1]);
    test_corrupted(argv[1]);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("larder C ABI: all checks passed\n");
    return 0;
}
