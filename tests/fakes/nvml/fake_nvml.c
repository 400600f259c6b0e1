/*
 * A fake libnvidia-ml.so.1 that replays a real NVML capture.
 *
 * Why: orb8 must run the same pynvml -> ctypes -> libnvidia-ml.so.1 path in
 * tests as on a GPU node, so the binding's struct layouts, symbol versions
 * (_v2/_v3 as pynvml 13.x resolves them against driver 580) and return codes
 * are exercised for real. Only the data comes from a file.
 *
 * Contract (other tools rely on it):
 *   FAKE_NVML_CAPTURE  path of a capture in the format of
 *                      tests/fixtures/nvml-h200-two-cgroups.json, read at init
 *   FAKE_NVML_STATE    idle | busy.0 | busy.1 | after (default busy.0)
 * A recorded error ({"nvml_error": "...", "code": N}) is returned as code N;
 * a field the capture lacks is NVML_ERROR_NOT_SUPPORTED. Optional per-device
 * "xid_events": [N, ...] are delivered once each through nvmlEventSetWait_v2.
 * nvmlDeviceGetProcessUtilization serves the captured samples whatever
 * lastSeenTimeStamp says: a replay has no clock.
 *
 * The JSON reader below is deliberately minimal: objects, arrays, strings
 * without unicode escapes beyond \uXXXX -> '?', numbers, true/false/null.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_NOT_FOUND = 6, NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_TIMEOUT = 10, NVML_ERROR_UNKNOWN = 999,
};

/* ---- minimal JSON ---------------------------------------------------- */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct json {
    enum jtype type;
    double num;
    unsigned long long u; /* exact integer value (capture counters exceed 2^53 rarely, ids do) */
    int is_int;
    char *str;
    struct json **items; /* array items or object values */
    char **keys;         /* object keys */
    size_t len;
} json;

static const char *jp;

static void skip_ws(void) {
    while (*jp == ' ' || *jp == '\n' || *jp == '\r' || *jp == '\t') jp++;
}

static json *parse_value(void);

static char *parse_string(void) {
    if (*jp != '"') return NULL;
    jp++;
    size_t cap = 16, n = 0;
    char *out = malloc(cap);
    while (*jp && *jp != '"') {
        char c = *jp++;
        if (c == '\\') {
            c = *jp++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': c = '?'; for (int i = 0; i < 4 && *jp; i++) jp++; break;
            case '\0': free(out); return NULL;
            default: break; /* \" \\ \/ */
            }
        }
        if (n + 2 > cap) out = realloc(out, cap *= 2);
        out[n++] = c;
    }
    if (*jp != '"') { free(out); return NULL; }
    jp++;
    out[n] = 0;
    return out;
}

static json *new_json(enum jtype t) {
    json *j = calloc(1, sizeof(*j));
    j->type = t;
    return j;
}

static int append(json *j, char *key, json *v) {
    if (!v) return -1;
    j->items = realloc(j->items, (j->len + 1) * sizeof(*j->items));
    j->items[j->len] = v;
    if (j->type == J_OBJ) {
        j->keys = realloc(j->keys, (j->len + 1) * sizeof(*j->keys));
        j->keys[j->len] = key;
    }
    j->len++;
    return 0;
}

static json *parse_value(void) {
    skip_ws();
    if (*jp == '{' || *jp == '[') {
        int obj = *jp == '{';
        char close = obj ? '}' : ']';
        json *j = new_json(obj ? J_OBJ : J_ARR);
        jp++;
        skip_ws();
        if (*jp == close) { jp++; return j; }
        for (;;) {
            char *key = NULL;
            skip_ws();
            if (obj) {
                if (!(key = parse_string())) return NULL;
                skip_ws();
                if (*jp++ != ':') return NULL;
            }
            if (append(j, key, parse_value())) return NULL;
            skip_ws();
            if (*jp == ',') { jp++; continue; }
            if (*jp == close) { jp++; return j; }
            return NULL;
        }
    }
    if (*jp == '"') {
        json *j = new_json(J_STR);
        return (j->str = parse_string()) ? j : NULL;
    }
    if (!strncmp(jp, "true", 4) || !strncmp(jp, "false", 5)) {
        json *j = new_json(J_BOOL);
        j->u = *jp == 't';
        j->num = (double)j->u;
        j->is_int = 1;
        jp += j->u ? 4 : 5;
        return j;
    }
    if (!strncmp(jp, "null", 4)) { jp += 4; return new_json(J_NULL); }
    if (*jp == '-' || (*jp >= '0' && *jp <= '9')) {
        json *j = new_json(J_NUM);
        const char *start = jp;
        char *end;
        j->num = strtod(start, &end);
        if (end == start) return NULL;
        size_t span = (size_t)(end - start);
        j->is_int = !memchr(start, '.', span) && !memchr(start, 'e', span) && !memchr(start, 'E', span);
        if (j->is_int) {
            errno = 0;
            j->u = *start == '-' ? (unsigned long long)strtoll(start, NULL, 10)
                                 : strtoull(start, NULL, 10);
        } else {
            j->u = (unsigned long long)j->num;
        }
        jp = end;
        return j;
    }
    return NULL;
}

static json *get(const json *j, const char *key) {
    if (!j || j->type != J_OBJ) return NULL;
    for (size_t i = 0; i < j->len; i++)
        if (!strcmp(j->keys[i], key)) return j->items[i];
    return NULL;
}

static json *at(const json *j, size_t i) {
    return j && j->type == J_ARR && i < j->len ? j->items[i] : NULL;
}

/* ---- the replayed state ----------------------------------------------- */

typedef struct device {
    unsigned index;
    json *data;
    size_t xid_next;
} device;

typedef struct event_set {
    int unused;
} event_set;

static json *g_state;
static device g_devices[64];
static unsigned g_count;
static int g_init;
static char g_error[512];

static const char *fake_error(void) { return g_error; }

/* NVML_SUCCESS, or the recorded/absent error for a field. */
static nvmlReturn_t field(const device *d, const char *key, json **out) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    json *v = get(d->data, key);
    if (!v) return NVML_ERROR_NOT_SUPPORTED;
    json *code = get(v, "code");
    if (get(v, "nvml_error") && code) return (nvmlReturn_t)code->u;
    *out = v;
    return NVML_SUCCESS;
}

static nvmlReturn_t load(void) {
    const char *path = getenv("FAKE_NVML_CAPTURE");
    const char *state = getenv("FAKE_NVML_STATE");
    if (!state || !*state) state = "busy.0";
    if (!path) {
        snprintf(g_error, sizeof g_error, "FAKE_NVML_CAPTURE is not set");
        return NVML_ERROR_UNKNOWN;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(g_error, sizeof g_error, "cannot open %s: %s", path, strerror(errno));
        return NVML_ERROR_UNKNOWN;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    size_t got = fread(text, 1, (size_t)size, f);
    fclose(f);
    text[got] = 0;
    jp = text;
    json *root = parse_value();
    if (!root || root->type != J_OBJ) {
        snprintf(g_error, sizeof g_error, "%s is not a JSON capture object", path);
        return NVML_ERROR_UNKNOWN;
    }
    if (!strncmp(state, "busy.", 5)) {
        g_state = at(get(root, "busy"), (size_t)atoi(state + 5));
    } else {
        g_state = get(root, state);
    }
    if (!g_state) {
        snprintf(g_error, sizeof g_error, "state %s not in %s", state, path);
        return NVML_ERROR_UNKNOWN;
    }
    json *devices = get(g_state, "devices");
    g_count = 0;
    for (size_t i = 0; devices && i < devices->len && i < 64; i++) {
        g_devices[i].index = (unsigned)i;
        g_devices[i].data = devices->items[i];
        g_devices[i].xid_next = 0;
        g_count++;
    }
    return NVML_SUCCESS;
}

/* ---- exported NVML API ------------------------------------------------- */

nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    if (g_init) { g_init++; return NVML_SUCCESS; }
    nvmlReturn_t r = load();
    if (r == NVML_SUCCESS) g_init = 1;
    else fprintf(stderr, "fake-nvml: %s\n", fake_error());
    return r;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    g_init--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 15: return "GPU is lost";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_str(const char *s, char *buf, unsigned len) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, s);
    return NVML_SUCCESS;
}

static nvmlReturn_t state_str(const char *key, char *buf, unsigned len) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    json *v = get(g_state, key);
    if (!v || v->type != J_STR) return NVML_ERROR_NOT_SUPPORTED;
    return copy_str(v->str, buf, len);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *buf, unsigned len) { return state_str("driver", buf, len); }
nvmlReturn_t nvmlSystemGetNVMLVersion(char *buf, unsigned len) { return state_str("nvml_version", buf, len); }

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    json *j = get(g_state, "cuda_driver_version");
    if (!j) return NVML_ERROR_NOT_SUPPORTED;
    *v = (int)j->u;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    *count = g_count;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, device **out) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    if (index >= g_count || !out) return NVML_ERROR_INVALID_ARGUMENT;
    *out = &g_devices[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned i, device **out) { return nvmlDeviceGetHandleByIndex_v2(i, out); }

nvmlReturn_t nvmlDeviceGetIndex(device *d, unsigned *index) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    *index = d->index;
    return NVML_SUCCESS;
}

static nvmlReturn_t dev_str(device *d, const char *key, char *buf, unsigned len) {
    json *v = NULL;
    nvmlReturn_t r = field(d, key, &v);
    if (r) return r;
    return v->type == J_STR ? copy_str(v->str, buf, len) : NVML_ERROR_NOT_SUPPORTED;
}
nvmlReturn_t nvmlDeviceGetName(device *d, char *buf, unsigned len) { return dev_str(d, "name", buf, len); }
nvmlReturn_t nvmlDeviceGetUUID(device *d, char *buf, unsigned len) { return dev_str(d, "uuid", buf, len); }
nvmlReturn_t nvmlDeviceGetSerial(device *d, char *buf, unsigned len) { return dev_str(d, "serial", buf, len); }

/* Scalar fields, by the capture's key. */
#define SCALAR(fn, key, type)                                   \
    nvmlReturn_t fn(device *d, type *out) {                     \
        json *v = NULL;                                         \
        nvmlReturn_t r = field(d, key, &v);                     \
        if (r) return r;                                        \
        if (!out) return NVML_ERROR_INVALID_ARGUMENT;           \
        *out = (type)v->u;                                      \
        return NVML_SUCCESS;                                    \
    }
SCALAR(nvmlDeviceGetPowerUsage, "power_usage_mw", unsigned)
SCALAR(nvmlDeviceGetEnforcedPowerLimit, "power_limit_mw", unsigned)
SCALAR(nvmlDeviceGetPowerManagementLimit, "power_limit_mw", unsigned)
SCALAR(nvmlDeviceGetTotalEnergyConsumption, "total_energy_mj", unsigned long long)
SCALAR(nvmlDeviceGetCurrentClocksEventReasons, "clocks_event_reasons", unsigned long long)
SCALAR(nvmlDeviceGetCurrentClocksThrottleReasons, "clocks_event_reasons", unsigned long long)
SCALAR(nvmlDeviceGetPerformanceState, "pstate", int)
SCALAR(nvmlDeviceGetComputeMode, "compute_mode", int)
SCALAR(nvmlDeviceGetPersistenceMode, "persistence_mode", int)
SCALAR(nvmlDeviceGetMinorNumber, "minor_number", unsigned)
SCALAR(nvmlDeviceGetFanSpeed, "fan_speed", unsigned)

nvmlReturn_t nvmlDeviceGetTemperature(device *d, int sensor, unsigned *out) {
    json *v = NULL;
    if (sensor != 0) return NVML_ERROR_NOT_SUPPORTED; /* only NVML_TEMPERATURE_GPU is captured */
    nvmlReturn_t r = field(d, "temperature_gpu", &v);
    if (r) return r;
    *out = (unsigned)v->u;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(device *d, int type, unsigned *out) {
    /* NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2 */
    const char *key = type == 1 ? "clock_sm_mhz" : type == 2 ? "clock_mem_mhz" : NULL;
    json *v = NULL;
    if (!key) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t r = field(d, key, &v);
    if (r) return r;
    *out = (unsigned)v->u;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxClockInfo(device *d, int type, unsigned *out) {
    json *v = NULL;
    if (type != 1) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t r = field(d, "max_clock_sm_mhz", &v);
    if (r) return r;
    *out = (unsigned)v->u;
    return NVML_SUCCESS;
}

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

nvmlReturn_t nvmlDeviceGetMemoryInfo(device *d, nvmlMemory_t *out) {
    json *v = NULL;
    nvmlReturn_t r = field(d, "memory", &v);
    if (r) return r;
    out->total = get(v, "total")->u;
    out->free = get(v, "free")->u;
    out->used = get(v, "used")->u;
    return NVML_SUCCESS;
}

typedef struct { unsigned gpu, memory; } nvmlUtilization_t;

nvmlReturn_t nvmlDeviceGetUtilizationRates(device *d, nvmlUtilization_t *out) {
    json *v = NULL;
    nvmlReturn_t r = field(d, "utilization", &v);
    if (r) return r;
    out->gpu = (unsigned)get(v, "gpu")->u;
    out->memory = (unsigned)get(v, "memory")->u;
    return NVML_SUCCESS;
}

static nvmlReturn_t pair(device *d, const char *key, unsigned *a, unsigned *b) {
    json *v = NULL;
    nvmlReturn_t r = field(d, key, &v);
    if (r) return r;
    if (v->type != J_ARR || v->len < 2) return NVML_ERROR_NOT_SUPPORTED;
    *a = (unsigned)v->items[0]->u;
    *b = (unsigned)v->items[1]->u;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMigMode(device *d, unsigned *cur, unsigned *pending) { return pair(d, "mig_mode", cur, pending); }
nvmlReturn_t nvmlDeviceGetEccMode(device *d, unsigned *cur, unsigned *pending) { return pair(d, "ecc_mode", cur, pending); }
nvmlReturn_t nvmlDeviceGetEncoderUtilization(device *d, unsigned *u, unsigned *p) { return pair(d, "encoder_util", u, p); }
nvmlReturn_t nvmlDeviceGetDecoderUtilization(device *d, unsigned *u, unsigned *p) { return pair(d, "decoder_util", u, p); }

nvmlReturn_t nvmlDeviceGetTotalEccErrors(device *d, int errorType, int counterType, unsigned long long *out) {
    /* errorType: 0 corrected, 1 uncorrected; counterType: 0 volatile, 1 aggregate */
    const char *key = counterType != 0 ? NULL
                      : errorType == 0 ? "ecc_volatile_corrected"
                      : errorType == 1 ? "ecc_volatile_uncorrected" : NULL;
    json *v = NULL;
    if (!key) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t r = field(d, key, &v);
    if (r) return r;
    *out = v->u;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(device *d, unsigned *corr, unsigned *unc, unsigned *pending,
                                       unsigned *failure) {
    json *v = NULL;
    nvmlReturn_t r = field(d, "remapped_rows", &v);
    if (r) return r;
    if (v->type != J_ARR || v->len < 4) return NVML_ERROR_NOT_SUPPORTED;
    *corr = (unsigned)v->items[0]->u;
    *unc = (unsigned)v->items[1]->u;
    *pending = (unsigned)v->items[2]->u;
    *failure = (unsigned)v->items[3]->u;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPcieThroughput(device *d, int counter, unsigned *out) {
    /* NVML_PCIE_UTIL_TX_BYTES = 0, NVML_PCIE_UTIL_RX_BYTES = 1; KB/s */
    const char *key = counter == 0 ? "pcie_tx_kbps" : counter == 1 ? "pcie_rx_kbps" : NULL;
    json *v = NULL;
    if (!key) return NVML_ERROR_NOT_SUPPORTED;
    nvmlReturn_t r = field(d, key, &v);
    if (r) return r;
    *out = (unsigned)v->u;
    return NVML_SUCCESS;
}

/* nvmlProcessInfo_v2_t: what nvmlDeviceGet*RunningProcesses_v3 fill on driver 580. */
typedef struct {
    unsigned pid;
    unsigned long long usedGpuMemory;
    unsigned gpuInstanceId;
    unsigned computeInstanceId;
} nvmlProcessInfo_t;

static nvmlReturn_t processes(device *d, const char *key, unsigned *count, nvmlProcessInfo_t *out) {
    json *v = NULL;
    nvmlReturn_t r = field(d, key, &v);
    if (r) return r;
    if (!count || v->type != J_ARR) return NVML_ERROR_INVALID_ARGUMENT;
    if (*count < v->len || (!out && v->len)) {
        *count = (unsigned)v->len;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (size_t i = 0; i < v->len; i++) {
        json *p = v->items[i];
        json *gi = get(p, "gpuInstanceId"), *ci = get(p, "computeInstanceId");
        json *mem = get(p, "usedGpuMemory");
        out[i].pid = (unsigned)get(p, "pid")->u;
        out[i].usedGpuMemory = mem && mem->type == J_NUM ? mem->u : ~0ULL;
        out[i].gpuInstanceId = gi ? (unsigned)gi->u : 0xFFFFFFFFu;
        out[i].computeInstanceId = ci ? (unsigned)ci->u : 0xFFFFFFFFu;
    }
    *count = (unsigned)v->len;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(device *d, unsigned *c, nvmlProcessInfo_t *o) { return processes(d, "compute_processes", c, o); }
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(device *d, unsigned *c, nvmlProcessInfo_t *o) { return processes(d, "graphics_processes", c, o); }

typedef struct {
    unsigned pid;
    unsigned long long timeStamp;
    unsigned smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

nvmlReturn_t nvmlDeviceGetProcessUtilization(device *d, nvmlProcessUtilizationSample_t *out,
                                             unsigned *count, unsigned long long lastSeen) {
    (void)lastSeen;
    json *v = NULL;
    nvmlReturn_t r = field(d, "process_utilization", &v);
    if (r) return r;
    if (!count || v->type != J_ARR) return NVML_ERROR_INVALID_ARGUMENT;
    if (!v->len) return NVML_ERROR_NOT_FOUND;
    if (!out || *count < v->len) {
        *count = (unsigned)v->len;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (size_t i = 0; i < v->len; i++) {
        json *s = v->items[i];
        out[i].pid = (unsigned)get(s, "pid")->u;
        out[i].timeStamp = get(s, "timeStamp")->u;
        out[i].smUtil = (unsigned)get(s, "smUtil")->u;
        out[i].memUtil = (unsigned)get(s, "memUtil")->u;
        out[i].encUtil = (unsigned)get(s, "encUtil")->u;
        out[i].decUtil = (unsigned)get(s, "decUtil")->u;
    }
    *count = (unsigned)v->len;
    return NVML_SUCCESS;
}

/* ---- XID events -------------------------------------------------------- */

#define NVML_EVENT_TYPE_XID_CRITICAL_ERROR 0x8ULL

typedef struct {
    device *device;
    unsigned long long eventType, eventData;
    unsigned gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

static event_set g_event_set;

nvmlReturn_t nvmlEventSetCreate(event_set **set) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    *set = &g_event_set;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlEventSetFree(event_set *set) { (void)set; return NVML_SUCCESS; }

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(device *d, unsigned long long *types) {
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    *types = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(device *d, unsigned long long types, event_set *set) {
    (void)types; (void)set;
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    return d ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlEventSetWait_v2(event_set *set, nvmlEventData_t *data, unsigned timeoutms) {
    (void)set;
    if (!g_init) return NVML_ERROR_UNINITIALIZED;
    for (unsigned i = 0; i < g_count; i++) {
        device *d = &g_devices[i];
        json *xids = get(d->data, "xid_events");
        if (xids && xids->type == J_ARR && d->xid_next < xids->len) {
            memset(data, 0, sizeof *data);
            data->device = d;
            data->eventType = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
            data->eventData = xids->items[d->xid_next++]->u;
            data->gpuInstanceId = data->computeInstanceId = 0xFFFFFFFFu;
            return NVML_SUCCESS;
        }
    }
    /* Nothing pending: behave like the driver and wait out the timeout. */
    unsigned ms = timeoutms > 1000 ? 1000 : timeoutms;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return NVML_ERROR_TIMEOUT;
}
