/* powercut: an LD_PRELOAD shim that lets a test undo what an OS would lose in a power cut.
 *
 * For files under $POWERCUT_DIR it appends, to the log $POWERCUT_LOG and before each
 * change reaches the file, what the change overwrites: the pre-image of every
 * write/pwrite/writev/pwritev, the size and cut-off bytes of every ftruncate and
 * fallocate, each file it creates and each file it unlinks (kept as a hard link under
 * $POWERCUT_LOG.bak.N until the unlink is durable). An fsync/fdatasync of a file covers
 * that file's earlier records; an fsync of a directory covers the creates and unlinks
 * in it (POSIX: a new name is durable only once its directory is synced); sync()
 * and syncfs() cover everything. When no record is left uncovered the log is
 * emptied, so it only ever holds what a power cut would undo. After the process is
 * SIGKILLed, tests/powercut/undo.py replays the log backwards: every change no sync
 * covered is undone (or, in torn mode, kept sector by sector at random).
 *
 * Files ending in "-shm" are not logged (SQLite maps them and rebuilds them after a
 * crash; the undo deletes them). Anything this model cannot undo (O_DIRECT, a shared
 * writable mapping, rename) is written to the log as an 'X' record: the test fails.
 *
 * Each sync is also appended to $POWERCUT_LOG.syncs as a text line
 * "<monotonic start ns> <monotonic end ns> <path>" so a test can tell which
 * acknowledged writes a sync must have made durable.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536

typedef struct {
    int tracked;  /* 1: a file under the directory, 2: the directory itself or one in it */
    int append;   /* opened with O_APPEND */
    int synced;   /* opened with O_SYNC / O_DSYNC: each write is durable at once */
    dev_t dev;
    ino_t ino;
    char *path;
} fdinfo;

typedef struct {
    dev_t dev;
    ino_t ino;
    long pending;
} pend;

static fdinfo fds[MAXFD];
static pend pends[1024];
static int npends;
static long total_pending;
static pthread_mutex_t mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static char dir[PATH_MAX];
static size_t dirlen;
static int logfd = -1, syncfd = -1;
static char logpath[PATH_MAX];
static int inited, bakno;

static ssize_t (*r_write)(int, const void *, size_t);
static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*r_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*r_writev)(int, const struct iovec *, int);
static ssize_t (*r_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*r_pwritev64)(int, const struct iovec *, int, off_t);
static ssize_t (*r_pread)(int, void *, size_t, off_t);
static int (*r_ftruncate)(int, off_t);
static int (*r_ftruncate64)(int, off_t);
static int (*r_fallocate)(int, int, off_t, off_t);
static int (*r_fallocate64)(int, int, off_t, off_t);
static int (*r_posix_fallocate)(int, off_t, off_t);
static int (*r_posix_fallocate64)(int, off_t, off_t);
static int (*r_fsync)(int);
static int (*r_fdatasync)(int);
static void (*r_sync)(void);
static int (*r_syncfs)(int);
static int (*r_open)(const char *, int, ...);
static int (*r_open64)(const char *, int, ...);
static int (*r_openat)(int, const char *, int, ...);
static int (*r_openat64)(int, const char *, int, ...);
static int (*r_close)(int);
static int (*r_unlink)(const char *);
static int (*r_unlinkat)(int, const char *, int);
static int (*r_rename)(const char *, const char *);
static int (*r_renameat)(int, const char *, int, const char *);
static int (*r_renameat2)(int, const char *, int, const char *, unsigned int);
static void *(*r_mmap)(void *, size_t, int, int, int, off_t);
static void *(*r_mmap64)(void *, size_t, int, int, int, off_t);

#define RESOLVE(name) r_##name = dlsym(RTLD_NEXT, #name)

static void init(void) {
    if (inited) return;
    RESOLVE(write); RESOLVE(pwrite); RESOLVE(pwrite64); RESOLVE(writev); RESOLVE(pwritev);
    RESOLVE(pwritev64); RESOLVE(pread); RESOLVE(ftruncate); RESOLVE(ftruncate64); RESOLVE(fallocate);
    RESOLVE(fallocate64); RESOLVE(posix_fallocate); RESOLVE(posix_fallocate64); RESOLVE(fsync);
    RESOLVE(fdatasync); RESOLVE(sync); RESOLVE(syncfs); RESOLVE(open); RESOLVE(open64); RESOLVE(openat);
    RESOLVE(openat64); RESOLVE(close); RESOLVE(unlink); RESOLVE(unlinkat); RESOLVE(rename);
    RESOLVE(renameat); RESOLVE(renameat2); RESOLVE(mmap); RESOLVE(mmap64);
    const char *d = getenv("POWERCUT_DIR"), *l = getenv("POWERCUT_LOG");
    if (d && l && strlen(d) < PATH_MAX - 1 && strlen(l) < PATH_MAX - 16) {
        strcpy(dir, d);
        dirlen = strlen(dir);
        while (dirlen > 1 && dir[dirlen - 1] == '/') dir[--dirlen] = 0;
        strcpy(logpath, l);
        logfd = r_open(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        char s[PATH_MAX + 8];
        snprintf(s, sizeof s, "%s.syncs", l);
        syncfd = r_open(s, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    }
    inited = 1;
}

__attribute__((constructor)) static void ctor(void) { init(); }

/* -- the log ------------------------------------------------------------------ */

static void put(const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = r_write(logfd, c, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            abort(); /* a log we cannot write makes every later verdict a lie */
        }
        c += w;
        n -= (size_t)w;
    }
}

/* Record: type (1 byte), dev, ino, path length + path, then type-specific fields. */
static void head(char type, dev_t dev, ino_t ino, const char *path) {
    uint64_t d = dev, i = ino;
    uint32_t n = (uint32_t)strlen(path);
    put(&type, 1);
    put(&d, 8);
    put(&i, 8);
    put(&n, 4);
    put(path, n);
}

static void note_error(const char *what, const char *path) {
    head('X', 0, 0, path);
    uint32_t n = (uint32_t)strlen(what);
    put(&n, 4);
    put(what, n);
}

static pend *pending_of(dev_t dev, ino_t ino) {
    for (int i = 0; i < npends; i++)
        if (pends[i].dev == dev && pends[i].ino == ino) return &pends[i];
    if (npends == (int)(sizeof pends / sizeof pends[0])) abort();
    pends[npends] = (pend){dev, ino, 0};
    return &pends[npends++];
}

static void add_pending(dev_t dev, ino_t ino) {
    pending_of(dev, ino)->pending++;
    total_pending++;
}

static void maybe_empty_log(void) {
    if (total_pending == 0) r_ftruncate(logfd, 0);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* -- paths ---------------------------------------------------------------------- */

static int abspath(int dirfd, const char *path, char *out) {
    if (path[0] == '/') {
        if (strlen(path) >= PATH_MAX) return 0;
        strcpy(out, path);
        return 1;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return 0;
        base[n] = 0;
    }
    return snprintf(out, PATH_MAX, "%s/%s", base, path) < PATH_MAX;
}

static int under(const char *p) {
    return dirlen && strncmp(p, dir, dirlen) == 0 && (p[dirlen] == '/' || p[dirlen] == 0);
}

static int is_shm(const char *p) {
    size_t n = strlen(p);
    return n >= 4 && strcmp(p + n - 4, "-shm") == 0;
}

static void parent_of(const char *p, char *out) {
    strcpy(out, p);
    char *s = strrchr(out, '/');
    if (s && s != out) *s = 0;
}

/* -- opening and closing ------------------------------------------------------------ */

static int after_open(int fd, const char *abs, int flags, int existed) {
    if (fd < 0 || fd >= MAXFD || logfd < 0 || !under(abs) || is_shm(abs)) return fd;
    struct stat st;
    if (fstat(fd, &st) != 0) return fd;
    fdinfo *f = &fds[fd];
    free(f->path);
    f->path = strdup(abs);
    f->dev = st.st_dev;
    f->ino = st.st_ino;
    f->append = (flags & O_APPEND) != 0;
    f->synced = (flags & (O_SYNC | O_DSYNC)) != 0;
    f->tracked = S_ISDIR(st.st_mode) ? 2 : 1;
    if (flags & O_DIRECT) note_error("O_DIRECT is not modelled", abs);
    if (!existed && f->tracked == 1) {
        /* a new name: undone unless its directory is synced later */
        char par[PATH_MAX];
        struct stat ps;
        parent_of(abs, par);
        if (stat(par, &ps) == 0) {
            head('C', ps.st_dev, ps.st_ino, abs);
            add_pending(ps.st_dev, ps.st_ino);
        }
    }
    return fd;
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode, int at) {
    init();
    char abs[PATH_MAX];
    int track = logfd >= 0 && path && abspath(dirfd, path, abs) && under(abs) && !is_shm(abs);
    if (!track) {
        if (at) return r_openat(dirfd, path, flags, mode);
        return r_open(path, flags, mode);
    }
    pthread_mutex_lock(&mu);
    struct stat st;
    int existed = stat(abs, &st) == 0;
    int fd = at ? r_openat(dirfd, path, flags, mode) : r_open(path, flags, mode);
    int save = errno;
    after_open(fd, abs, flags, existed);
    if (fd >= 0 && (flags & O_TRUNC) && existed && st.st_size > 0 && S_ISREG(st.st_mode))
        note_error("O_TRUNC of an existing file is not modelled", abs);
    pthread_mutex_unlock(&mu);
    errno = save;
    return fd;
}

#define MODE_ARG(flags)                                   \
    mode_t mode = 0;                                      \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                \
        va_list ap;                                       \
        va_start(ap, flags);                              \
        mode = (mode_t)va_arg(ap, int);                   \
        va_end(ap);                                       \
    }

int open(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, path, flags, mode, 0); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(AT_FDCWD, path, flags, mode, 0); }
int openat(int d, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(d, path, flags, mode, 1); }
int openat64(int d, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(d, path, flags, mode, 1); }
int __open_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0, 0); }
int __open64_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0, 0); }

int close(int fd) {
    init();
    if (fd >= 0 && fd < MAXFD && fds[fd].tracked) {
        pthread_mutex_lock(&mu);
        fds[fd].tracked = 0;
        pthread_mutex_unlock(&mu);
    }
    return r_close(fd);
}

/* -- writes ------------------------------------------------------------------------ */

/* Log (as a 'W' write or 'T' size change) the pre-image of [off, off + len) of fd's file (the caller holds mu). */
static void log_change(char kind, fdinfo *f, int fd, off_t off, size_t len) {
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (f->append) off = st.st_size;
    int64_t o = off, size = st.st_size;
    uint64_t n = len;
    uint64_t have = size > o ? (uint64_t)(size - o) : 0;
    if (have > n) have = n;
    head(kind, f->dev, f->ino, f->path);
    put(&o, 8);
    put(&n, 8);
    put(&size, 8);
    put(&have, 8);
    char buf[65536];
    uint64_t done = 0;
    while (done < have) {
        size_t chunk = have - done > sizeof buf ? sizeof buf : (size_t)(have - done);
        ssize_t r = r_pread(fd, buf, chunk, o + (off_t)done);
        if (r <= 0) abort();
        put(buf, (size_t)r);
        done += (uint64_t)r;
    }
    add_pending(f->dev, f->ino);
}

static fdinfo *tracked_file(int fd) {
    init();
    if (fd < 0 || fd >= MAXFD || fds[fd].tracked != 1 || fds[fd].synced) return NULL;
    return &fds[fd];
}

#define WRAP_WRITE(call, off_expr, len_expr)      \
    fdinfo *f = tracked_file(fd);                 \
    if (!f) return call;                          \
    pthread_mutex_lock(&mu);                      \
    log_change('W', f, fd, off_expr, len_expr);         \
    ssize_t rc = call;                            \
    int save = errno;                             \
    pthread_mutex_unlock(&mu);                    \
    errno = save;                                 \
    return rc;

static size_t iov_len(const struct iovec *iov, int n) {
    size_t t = 0;
    for (int i = 0; i < n; i++) t += iov[i].iov_len;
    return t;
}

ssize_t write(int fd, const void *b, size_t n) { WRAP_WRITE(r_write(fd, b, n), lseek(fd, 0, SEEK_CUR), n) }
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) { WRAP_WRITE(r_pwrite(fd, b, n, o), o, n) }
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) { WRAP_WRITE(r_pwrite64(fd, b, n, o), o, n) }
ssize_t writev(int fd, const struct iovec *v, int c) { WRAP_WRITE(r_writev(fd, v, c), lseek(fd, 0, SEEK_CUR), iov_len(v, c)) }
ssize_t pwritev(int fd, const struct iovec *v, int c, off_t o) { WRAP_WRITE(r_pwritev(fd, v, c, o), o, iov_len(v, c)) }
ssize_t pwritev64(int fd, const struct iovec *v, int c, off_t o) { WRAP_WRITE(r_pwritev64(fd, v, c, o), o, iov_len(v, c)) }

/* A size change: record the old size and, when shrinking, the bytes cut off. */
static void log_resize(fdinfo *f, int fd, off_t newsize) {
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (newsize < st.st_size) {
        log_change('T', f, fd, newsize, (size_t)(st.st_size - newsize));
    } else if (newsize > st.st_size) {
        log_change('T', f, fd, st.st_size, 0); /* a zero-length pre-image: restores the old size */
    }
}

#define WRAP_RESIZE(call, newsize)                \
    fdinfo *f = tracked_file(fd);                 \
    if (!f) return call;                          \
    pthread_mutex_lock(&mu);                      \
    log_resize(f, fd, newsize);                   \
    int rc = call;                                \
    int save = errno;                             \
    pthread_mutex_unlock(&mu);                    \
    errno = save;                                 \
    return rc;

int ftruncate(int fd, off_t n) { WRAP_RESIZE(r_ftruncate(fd, n), n) }
int ftruncate64(int fd, off_t n) { WRAP_RESIZE(r_ftruncate64(fd, n), n) }

static off_t grown(int fd, off_t end) {
    struct stat st;
    return fstat(fd, &st) == 0 && end > st.st_size ? end : (fstat(fd, &st) == 0 ? st.st_size : end);
}

int fallocate(int fd, int m, off_t o, off_t n) { WRAP_RESIZE(r_fallocate(fd, m, o, n), (m & 1) ? grown(fd, 0) : grown(fd, o + n)) }
int fallocate64(int fd, int m, off_t o, off_t n) { WRAP_RESIZE(r_fallocate64(fd, m, o, n), (m & 1) ? grown(fd, 0) : grown(fd, o + n)) }
int posix_fallocate(int fd, off_t o, off_t n) { WRAP_RESIZE(r_posix_fallocate(fd, o, n), grown(fd, o + n)) }
int posix_fallocate64(int fd, off_t o, off_t n) { WRAP_RESIZE(r_posix_fallocate64(fd, o, n), grown(fd, o + n)) }

/* -- syncs ------------------------------------------------------------------------ */

static void note_sync_line(int64_t start, const char *path) {
    char line[PATH_MAX + 64];
    int n = snprintf(line, sizeof line, "%lld %lld %s\n", (long long)start, (long long)now_ns(), path);
    if (syncfd >= 0 && n > 0) r_write(syncfd, line, (size_t)n);
}

static int do_sync(int fd, int (*real)(int)) {
    init();
    if (fd < 0 || fd >= MAXFD || !fds[fd].tracked) return real(fd);
    /* Held across the real sync: a write racing it would otherwise be counted as covered. */
    pthread_mutex_lock(&mu);
    int64_t start = now_ns();
    int rc = real(fd);
    int save = errno;
    if (rc == 0) {
        fdinfo *f = &fds[fd];
        head('S', f->dev, f->ino, f->path);
        pend *p = pending_of(f->dev, f->ino);
        total_pending -= p->pending;
        p->pending = 0;
        note_sync_line(start, f->path);
        maybe_empty_log();
    }
    pthread_mutex_unlock(&mu);
    errno = save;
    return rc;
}

int fsync(int fd) { return do_sync(fd, r_fsync); }
int fdatasync(int fd) { return do_sync(fd, r_fdatasync); }

static void sync_all(void) {
    head('A', 0, 0, "");
    for (int i = 0; i < npends; i++) pends[i].pending = 0;
    total_pending = 0;
    note_sync_line(now_ns(), "*");
    maybe_empty_log();
}

void sync(void) {
    init();
    pthread_mutex_lock(&mu);
    r_sync();
    if (logfd >= 0) sync_all();
    pthread_mutex_unlock(&mu);
}

int syncfs(int fd) {
    init();
    pthread_mutex_lock(&mu);
    int rc = r_syncfs(fd);
    int save = errno;
    if (rc == 0 && logfd >= 0) sync_all();
    pthread_mutex_unlock(&mu);
    errno = save;
    return rc;
}

/* -- names ------------------------------------------------------------------------ */

static int do_unlink(int dirfd, const char *path, int flags, int at) {
    init();
    char abs[PATH_MAX];
    if (logfd < 0 || (flags & AT_REMOVEDIR) || !path || !abspath(dirfd, path, abs) || !under(abs) || is_shm(abs))
        return at ? r_unlinkat(dirfd, path, flags) : r_unlink(path);
    pthread_mutex_lock(&mu);
    /* Keep the file under another name until the unlink is durable (the undo puts it back). */
    char bak[PATH_MAX + 32], par[PATH_MAX];
    snprintf(bak, sizeof bak, "%s.bak.%d", logpath, bakno++);
    struct stat ps;
    parent_of(abs, par);
    int rc;
    if (stat(par, &ps) == 0 && link(abs, bak) == 0) {
        head('U', ps.st_dev, ps.st_ino, abs);
        uint32_t n = (uint32_t)strlen(bak);
        put(&n, 4);
        put(bak, n);
        add_pending(ps.st_dev, ps.st_ino);
    }
    rc = at ? r_unlinkat(dirfd, path, flags) : r_unlink(path);
    int save = errno;
    pthread_mutex_unlock(&mu);
    errno = save;
    return rc;
}

int unlink(const char *path) { return do_unlink(AT_FDCWD, path, 0, 0); }
int unlinkat(int d, const char *path, int flags) { return do_unlink(d, path, flags, 1); }

static void rename_check(int d1, const char *a, int d2, const char *b) {
    char x[PATH_MAX], y[PATH_MAX];
    if (logfd < 0) return;
    if ((a && abspath(d1, a, x) && under(x)) || (b && abspath(d2, b, y) && under(y))) {
        pthread_mutex_lock(&mu);
        note_error("rename is not modelled", a ? a : "");
        pthread_mutex_unlock(&mu);
    }
}

int rename(const char *a, const char *b) { init(); rename_check(AT_FDCWD, a, AT_FDCWD, b); return r_rename(a, b); }
int renameat(int d1, const char *a, int d2, const char *b) { init(); rename_check(d1, a, d2, b); return r_renameat(d1, a, d2, b); }
int renameat2(int d1, const char *a, int d2, const char *b, unsigned int fl) {
    init();
    rename_check(d1, a, d2, b);
    return r_renameat2(d1, a, d2, b, fl);
}

/* -- mappings ------------------------------------------------------------------------ */

static void mmap_check(int prot, int flags, int fd) {
    if (fd >= 0 && fd < MAXFD && fds[fd].tracked == 1 && (prot & PROT_WRITE) && (flags & MAP_SHARED)) {
        pthread_mutex_lock(&mu);
        note_error("a shared writable mapping is not modelled", fds[fd].path);
        pthread_mutex_unlock(&mu);
    }
}

void *mmap(void *a, size_t n, int prot, int flags, int fd, off_t o) { init(); mmap_check(prot, flags, fd); return r_mmap(a, n, prot, flags, fd, o); }
void *mmap64(void *a, size_t n, int prot, int flags, int fd, off_t o) { init(); mmap_check(prot, flags, fd); return r_mmap64(a, n, prot, flags, fd, o); }
