/*
 * mesh_guard: an example Proxy-Wasm plugin for Lattice, in plain C with no SDK and no libc.
 *
 * What it does, from its pluginConfig (a flat JSON object of strings, as Istio serializes it):
 *   "response_header" + "response_value"  add that header to every response;
 *   "response_value_env"                  ... or take the value from this vmConfig.env variable;
 *   "deny_path_prefix"                    answer 403 to requests whose path starts with it,
 *   "allow_principal"                     ... unless the caller's verified mTLS identity is this one
 *                                         (the denial says which identity it saw, so a test can tell);
 *   "trap_path"                           trap (crash the module) on this exact path: shows that a
 *                                         module failing at run time affects only its own request.
 *   "tcp_guard": "on"                     as a NETWORK plugin (type: NETWORK): close TCP connections
 *                                         whose verified identity is not "allow_principal" when
 *                                         their first bytes arrive (after the TLS handshake).
 *
 * Built by build.sh with Debian's clang and wasm-ld for wasm32; the ABI is Proxy-Wasm 0.2.1
 * (https://github.com/proxy-wasm/spec). Memory: one arena, reset at the start of each callback,
 * since buffers the host hands us live only for the callback that asked for them; the
 * configuration is copied out of it into static storage.
 */

typedef unsigned int u32;
typedef unsigned char u8;

#define EXPORT(name) __attribute__((export_name(name)))
#define HOST(name) __attribute__((import_module("env"), import_name(name)))
#define WASI(name) __attribute__((import_module("wasi_snapshot_preview1"), import_name(name)))

HOST("proxy_log") u32 proxy_log(u32 level, const char *msg, u32 size);
HOST("proxy_get_buffer_bytes") u32 proxy_get_buffer_bytes(u32 type, u32 start, u32 max, u8 **out, u32 *out_size);
HOST("proxy_get_header_map_value")
u32 proxy_get_header_map_value(u32 map, const char *key, u32 key_size, u8 **out, u32 *out_size);
HOST("proxy_add_header_map_value")
u32 proxy_add_header_map_value(u32 map, const char *key, u32 key_size, const char *value, u32 value_size);
HOST("proxy_send_local_response")
u32 proxy_send_local_response(u32 status, const char *details, u32 details_size, const char *body, u32 body_size,
                              const u8 *headers, u32 headers_size, int grpc_status);
HOST("proxy_get_property") u32 proxy_get_property(const char *path, u32 path_size, u8 **out, u32 *out_size);
HOST("proxy_close_stream") u32 proxy_close_stream(u32 stream_type);
WASI("environ_sizes_get") u32 environ_sizes_get(u32 *count, u32 *size);
WASI("environ_get") u32 environ_get(u8 **environ, u8 *buf);

enum { LOG_INFO = 2, LOG_WARN = 3 };
enum { REQUEST_HEADERS = 0, RESPONSE_HEADERS = 2 };
enum { PLUGIN_CONFIGURATION = 7 };
enum { CONTINUE = 0, PAUSE = 1 };
enum { DOWNSTREAM = 2 };

/* ---- memory ---------------------------------------------------------------------------- */

static u8 arena[65536];
static u32 arena_used;

static void *arena_alloc(u32 size) {
    u32 start = (arena_used + 7u) & ~7u;
    if (size > sizeof(arena) || start > sizeof(arena) - size) return 0;
    arena_used = start + size;
    return arena + start;
}

EXPORT("proxy_on_memory_allocate") void *proxy_on_memory_allocate(u32 size) { return arena_alloc(size); }

static u32 length(const char *s) {
    u32 n = 0;
    while (s[n]) n++;
    return n;
}

static int starts_with(const u8 *s, u32 size, const char *prefix, u32 prefix_size) {
    if (prefix_size == 0 || size < prefix_size) return 0;
    for (u32 i = 0; i < prefix_size; i++)
        if (s[i] != (u8)prefix[i]) return 0;
    return 1;
}

static int equal(const u8 *a, u32 a_size, const char *b, u32 b_size) {
    return a_size == b_size && (a_size == 0 || starts_with(a, a_size, b, b_size));
}

/* ---- configuration ----------------------------------------------------------------------- */

#define VALUE_MAX 256
typedef struct {
    char text[VALUE_MAX];
    u32 size;
} Text;

static Text response_header, response_value, deny_prefix, allow_principal, trap_path, tcp_guard;

/* The value of "key" in a flat JSON object of strings; escapes other than \" and \\ are kept as
 * written. Returns 0 when the key is absent or its value is not a string that fits. */
static int json_string(const u8 *json, u32 size, const char *key, Text *out) {
    u32 key_size = length(key);
    for (u32 i = 0; i + key_size + 2 <= size; i++) {
        if (json[i] != '"' || !starts_with(json + i + 1, size - i - 1, key, key_size) ||
            json[i + 1 + key_size] != '"')
            continue;
        u32 j = i + key_size + 2;
        while (j < size && (json[j] == ' ' || json[j] == ':' || json[j] == '\n' || json[j] == '\t')) j++;
        if (j >= size || json[j] != '"') return 0;
        out->size = 0;
        for (j++; j < size && json[j] != '"'; j++) {
            if (json[j] == '\\' && j + 1 < size) j++;
            if (out->size == VALUE_MAX) return 0;
            out->text[out->size++] = (char)json[j];
        }
        return j < size;
    }
    return 0;
}

/* The value of an environment variable Envoy gives the VM (vmConfig.env). */
static int env_value(const Text *name, Text *out) {
    u32 count = 0, size = 0;
    if (environ_sizes_get(&count, &size) != 0 || count == 0) return 0;
    u8 **vars = arena_alloc(count * sizeof(u8 *));
    u8 *buf = arena_alloc(size);
    if (!vars || !buf || environ_get(vars, buf) != 0) return 0;
    for (u32 i = 0; i < count; i++) {
        u8 *var = vars[i];
        if (!starts_with(var, length((char *)var), name->text, name->size) || var[name->size] != '=') continue;
        const char *value = (char *)var + name->size + 1;
        out->size = 0;
        while (value[out->size] && out->size < VALUE_MAX) {
            out->text[out->size] = value[out->size];
            out->size++;
        }
        return 1;
    }
    return 0;
}

EXPORT("proxy_on_configure") u32 proxy_on_configure(u32 root_context, u32 config_size) {
    arena_used = 0;
    u8 *json = 0;
    u32 size = 0;
    if (config_size && proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, config_size, &json, &size) != 0) return 0;
    Text env_name;
    json_string(json, size, "response_header", &response_header);
    if (json_string(json, size, "response_value_env", &env_name)) {
        if (!env_value(&env_name, &response_value)) {
            static const char msg[] = "mesh_guard: response_value_env names no variable of the VM";
            proxy_log(LOG_WARN, msg, sizeof(msg) - 1);
            return 0;
        }
    } else {
        json_string(json, size, "response_value", &response_value);
    }
    json_string(json, size, "deny_path_prefix", &deny_prefix);
    json_string(json, size, "allow_principal", &allow_principal);
    json_string(json, size, "trap_path", &trap_path);
    json_string(json, size, "tcp_guard", &tcp_guard);
    static const char msg[] = "mesh_guard: configured";
    proxy_log(LOG_INFO, msg, sizeof(msg) - 1);
    return 1;
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

EXPORT("proxy_abi_version_0_2_1") void proxy_abi_version_0_2_1(void) {}
EXPORT("proxy_on_vm_start") u32 proxy_on_vm_start(u32 root_context, u32 vm_config_size) { return 1; }
EXPORT("proxy_on_context_create") void proxy_on_context_create(u32 context, u32 parent) {}
EXPORT("proxy_on_done") u32 proxy_on_done(u32 context) { return 1; }
EXPORT("proxy_on_log") void proxy_on_log(u32 context) {}
EXPORT("proxy_on_delete") void proxy_on_delete(u32 context) {}

/* ---- requests -------------------------------------------------------------------------------- */

static void append(char *buf, u32 *used, u32 cap, const char *s, u32 size) {
    for (u32 i = 0; i < size && *used < cap; i++) buf[(*used)++] = s[i];
}

static u32 deny(const u8 *path, u32 path_size, const u8 *principal, u32 principal_size) {
    static char body[VALUE_MAX * 3];
    u32 used = 0;
    append(body, &used, sizeof(body), "denied by mesh_guard: ", 22);
    append(body, &used, sizeof(body), (const char *)path, path_size);
    append(body, &used, sizeof(body), " for ", 5);
    if (principal_size)
        append(body, &used, sizeof(body), (const char *)principal, principal_size);
    else
        append(body, &used, sizeof(body), "no verified identity", 20);
    append(body, &used, sizeof(body), "\n", 1);
    static const char details[] = "mesh_guard_denied";
    proxy_send_local_response(403, details, sizeof(details) - 1, body, used, 0, 0, -1);
    return PAUSE;
}

/* The caller's verified identity (its certificate's URI SAN); size 0 if none. Property paths are
 * segments separated by NUL: connection.uri_san_peer_certificate. */
static u32 peer_principal(u8 **principal) {
    static const char property[] = "connection\0uri_san_peer_certificate";
    u32 size = 0;
    if (proxy_get_property(property, sizeof(property) - 1, principal, &size) != 0) return 0;
    return size;
}

static int allowed(const u8 *principal, u32 size) {
    return allow_principal.size && equal(principal, size, allow_principal.text, allow_principal.size);
}

EXPORT("proxy_on_request_headers") u32 proxy_on_request_headers(u32 context, u32 headers, u32 end_of_stream) {
    arena_used = 0;
    u8 *path = 0;
    u32 path_size = 0;
    if (proxy_get_header_map_value(REQUEST_HEADERS, ":path", 5, &path, &path_size) != 0) return CONTINUE;
    if (trap_path.size && equal(path, path_size, trap_path.text, trap_path.size)) __builtin_trap();
    if (!starts_with(path, path_size, deny_prefix.text, deny_prefix.size)) return CONTINUE;
    u8 *principal = 0;
    u32 principal_size = peer_principal(&principal);
    if (allowed(principal, principal_size)) return CONTINUE;
    return deny(path, path_size, principal, principal_size);
}

EXPORT("proxy_on_response_headers") u32 proxy_on_response_headers(u32 context, u32 headers, u32 end_of_stream) {
    arena_used = 0;
    if (response_header.size)
        proxy_add_header_map_value(RESPONSE_HEADERS, response_header.text, response_header.size, response_value.text,
                                   response_value.size);
    return CONTINUE;
}

/* ---- TCP connections (type: NETWORK) -------------------------------------------------------- */

EXPORT("proxy_on_new_connection") u32 proxy_on_new_connection(u32 context) { return CONTINUE; }

EXPORT("proxy_on_downstream_data") u32 proxy_on_downstream_data(u32 context, u32 size, u32 end_of_stream) {
    arena_used = 0;
    if (!equal((const u8 *)tcp_guard.text, tcp_guard.size, "on", 2)) return CONTINUE;
    u8 *principal = 0;
    u32 principal_size = peer_principal(&principal);
    if (allowed(principal, principal_size)) return CONTINUE;
    static const char msg[] = "mesh_guard: closing a TCP connection from an identity not allowed";
    proxy_log(LOG_INFO, msg, sizeof(msg) - 1);
    proxy_close_stream(DOWNSTREAM);
    return PAUSE;
}

EXPORT("proxy_on_upstream_data") u32 proxy_on_upstream_data(u32 context, u32 size, u32 end_of_stream) {
    return CONTINUE;
}
