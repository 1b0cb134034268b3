/* livegen's exact stream clock and master safety around rtmixer's PortAudio callback.
 *
 * rtmixer (spatialaudio/python-rtmixer) starts an action at a PortAudio time: its callback
 * compares the action's requested time with the block's outputBufferDacTime. PortAudio's JACK
 * host fills that time from jack_frame_time(), an estimate of "now" taken when the callback runs,
 * so a start lands a few frames off its target (more on a loaded machine). lg_callback is the
 * stream's callback instead: it counts the frames the stream has rendered and calls rtmixer's
 * callback with every time of the block set to (first frame of the block) / rate, so a start time
 * of F / rate lands on frame F exactly. After rtmixer has mixed the block it applies the master
 * safety of livegen/output/mixer.py to it (the same samples): NaN becomes 0, +-inf and anything
 * beyond +-ceiling becomes +-ceiling; blocks clamped and blocks with non-finite samples are counted.
 *
 * Nothing here allocates, locks or calls into Python. The reader (Python, through cffi) takes the
 * clock with lg_clock_read: (first frame, monotonic time at its callback, PortAudio's output
 * latency of the block), consistent through a sequence counter. The file has no Python API: it is
 * built as a plain shared library by setup.py (optional: without a C compiler livegen runs
 * rtmixer's callback directly, see livegen/output/exact_mixer.py) and loaded with cffi.dlopen.
 */

#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef double PaTime;

typedef struct PaStreamCallbackTimeInfo {
    PaTime inputBufferAdcTime;
    PaTime currentTime;
    PaTime outputBufferDacTime;
} PaStreamCallbackTimeInfo;

typedef int (*lg_inner_callback)(const void *input, void *output, unsigned long frames,
                                 const PaStreamCallbackTimeInfo *time_info, unsigned long flags,
                                 void *user_data);

/* Keep in step with CDEF in livegen/output/exact_mixer.py (checked there with lg_clock_size). */
struct lg_clock {
    void *inner;          /* rtmixer's callback */
    void *inner_state;    /* rtmixer's struct state */
    int32_t channels;
    double samplerate;
    float ceiling;        /* the master safety's ceiling; 0 or less: off */
    int64_t frames;       /* frames rendered by finished callbacks: the first frame of the next block */
    int64_t callbacks;
    uint32_t seq;         /* odd while block_frame, block_mono and latency are being written */
    int64_t block_frame;  /* the first frame of the latest block */
    double block_mono;    /* the monotonic clock (Python's time.monotonic) when its callback began */
    double latency;       /* PortAudio's outputBufferDacTime - currentTime of that block */
    int64_t clipped_blocks;
    int64_t non_finite_blocks;
};

size_t lg_clock_size(void) { return sizeof(struct lg_clock); }

static double monotonic_seconds(void)
{
    struct timespec ts;
#ifdef __APPLE__
    clock_gettime(CLOCK_UPTIME_RAW, &ts); /* what time.monotonic() reads on macOS */
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The master safety on one interleaved block; returns 1 if anything was changed. */
static int clamp_block(float *out, unsigned long n, float c, int *non_finite)
{
    int changed = 0;
    for (unsigned long i = 0; i < n; i++) {
        float x = out[i];
        if (x <= c && x >= -c)
            continue;
        changed = 1;
        if (x != x) {          /* NaN */
            *non_finite = 1;
            out[i] = 0.0f;
        } else if (x > c) {
            if (x - x != 0.0f) /* +inf */
                *non_finite = 1;
            out[i] = c;
        } else {
            if (x - x != 0.0f) /* -inf */
                *non_finite = 1;
            out[i] = -c;
        }
    }
    return changed;
}

int lg_callback(const void *input, void *output, unsigned long frames,
                const PaStreamCallbackTimeInfo *time_info, unsigned long flags, void *user_data)
{
    struct lg_clock *s = (struct lg_clock *)user_data;
    double mono = monotonic_seconds();
    int64_t first = s->frames; /* written by this thread only */
    uint32_t seq = s->seq;
    double latency = time_info ? time_info->outputBufferDacTime - time_info->currentTime : 0.0;

    __atomic_store_n(&s->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&s->block_frame, first, __ATOMIC_RELAXED);
    __atomic_store(&s->block_mono, &mono, __ATOMIC_RELAXED);
    __atomic_store(&s->latency, &latency, __ATOMIC_RELAXED);
    __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);

    PaStreamCallbackTimeInfo exact;
    exact.inputBufferAdcTime = exact.currentTime = exact.outputBufferDacTime = (double)first / s->samplerate;
    int rc = ((lg_inner_callback)s->inner)(input, output, frames, &exact, flags, s->inner_state);

    if (s->ceiling > 0.0f && output) {
        int non_finite = 0;
        if (clamp_block((float *)output, frames * (unsigned long)s->channels, s->ceiling, &non_finite)) {
            __atomic_store_n(&s->clipped_blocks, s->clipped_blocks + 1, __ATOMIC_RELAXED);
            if (non_finite)
                __atomic_store_n(&s->non_finite_blocks, s->non_finite_blocks + 1, __ATOMIC_RELAXED);
        }
    }
    __atomic_store_n(&s->callbacks, s->callbacks + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->frames, first + (int64_t)frames, __ATOMIC_RELEASE);
    return rc;
}

int64_t lg_clock_frames(const struct lg_clock *s)
{
    return __atomic_load_n(&s->frames, __ATOMIC_ACQUIRE);
}

/* The latest block's (first frame, monotonic time, latency); 0 if the callback kept writing. */
int lg_clock_read(const struct lg_clock *s, int64_t *frame, double *mono, double *latency)
{
    for (int tries = 0; tries < 10000; tries++) {
        uint32_t before = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (before & 1u)
            continue;
        int64_t f = __atomic_load_n(&s->block_frame, __ATOMIC_RELAXED);
        double m, l;
        __atomic_load(&s->block_mono, &m, __ATOMIC_RELAXED);
        __atomic_load(&s->latency, &l, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == before) {
            *frame = f;
            *mono = m;
            *latency = l;
            return 1;
        }
    }
    return 0;
}

/* Counters, read consistently enough for a status line (each one is atomic). */
void lg_clock_counters(const struct lg_clock *s, int64_t *callbacks, int64_t *clipped, int64_t *non_finite)
{
    *callbacks = __atomic_load_n(&s->callbacks, __ATOMIC_RELAXED);
    *clipped = __atomic_load_n(&s->clipped_blocks, __ATOMIC_RELAXED);
    *non_finite = __atomic_load_n(&s->non_finite_blocks, __ATOMIC_RELAXED);
}
