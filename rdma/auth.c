/*
 * The handshake every connection passes before its owner sees it: versions and
 * page size agree, and each side proves it holds the shared secret (the token
 * file) without sending it. Flow and message formats: include/rdmig/proto.h.
 *
 * Both sides send HELLO at once; then the connector proves itself, and the
 * listener proves itself only to a connector that passed. A failure at
 * any step closes the connection in the caller; the peer is told why with an
 * ERROR message where that is safe (it never learns which part of the proof was
 * wrong beyond "authentication failed").
 */
#define LOG_SUBSYS "auth"
#include "auth.h"

#include "rdmig/log.h"
#include "rdmig/proto.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TOKEN_MIN 16
#define TOKEN_MAX 4096

int rdmig_token_load(const char *path, struct rdmig_token *tok)
{
	struct stat st;
	ssize_t n;
	int fd, ret;

	memset(tok, 0, sizeof(*tok));
	if (!path) {
		pr_err("no token file given: both sides need --token-file with the same secret");
		return -EINVAL;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		ret = -errno;
		pr_err("cannot open token file %s: %s", path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		pr_err("token file %s is not a regular file", path);
		ret = -EINVAL;
		goto out_close;
	}
	/* Like ssh with its keys: a secret others can read is no secret. */
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		pr_err(
		    "token file %s is accessible by group or others (mode %03o); run chmod 600 %s",
		    path, (unsigned)(st.st_mode & 0777), path);
		ret = -EPERM;
		goto out_close;
	}
	if (st.st_size < TOKEN_MIN || st.st_size > TOKEN_MAX) {
		pr_err("token file %s holds %lld bytes; it needs %d to %d (e.g. head -c 32 "
		       "/dev/urandom | base64 > %s)",
		       path, (long long)st.st_size, TOKEN_MIN, TOKEN_MAX, path);
		ret = -EINVAL;
		goto out_close;
	}
	n = read(fd, tok->key, (size_t)st.st_size);
	if (n != st.st_size) {
		ret = n < 0 ? -errno : -EIO;
		pr_err("cannot read token file %s", path);
		goto out_close;
	}
	tok->len = (size_t)n;
	ret = 0;
out_close:
	close(fd);
	return ret;
}

void rdmig_token_wipe(struct rdmig_token *tok)
{
	OPENSSL_cleanse(tok, sizeof(*tok));
}

/* HMAC-SHA256(key, "rdmig-auth-v1" | role | nonce_a | nonce_b) */
static int auth_mac(const struct rdmig_token *tok, uint8_t role, const uint8_t *nonce_a,
                    const uint8_t *nonce_b, uint8_t mac[RDMIG_MAC_LEN])
{
	static const char label[] = "rdmig-auth-v1";
	uint8_t msg[sizeof(label) - 1 + 1 + 2 * RDMIG_NONCE_LEN];
	unsigned int maclen = 0;

	memcpy(msg, label, sizeof(label) - 1);
	msg[sizeof(label) - 1] = role;
	memcpy(msg + sizeof(label), nonce_a, RDMIG_NONCE_LEN);
	memcpy(msg + sizeof(label) + RDMIG_NONCE_LEN, nonce_b, RDMIG_NONCE_LEN);
	if (!HMAC(EVP_sha256(), tok->key, (int)tok->len, msg, sizeof(msg), mac, &maclen) ||
	    maclen != RDMIG_MAC_LEN)
		return -EIO;
	return 0;
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int left_ms(long long deadline)
{
	long long left = deadline - now_ms();

	return left > 0 ? (int)left : 0;
}

/*
 * Receive the next message, decoded. An ERROR from the peer becomes its code
 * (logged); any other type than 'want' is a protocol error.
 */
static int recv_expect(struct rdmig_conn *c, uint8_t *buf, size_t cap, long long deadline,
                       uint16_t want, struct rdmig_msg *m)
{
	int n = c->ops->recv(c, buf, cap, left_ms(deadline));

	if (n == -EAGAIN)
		n = -ETIMEDOUT;
	if (n < 0) {
		pr_err("handshake: waiting for %s: %s", rdmig_msg_type_name(want), strerror(-n));
		return n;
	}
	int ret = rdmig_msg_decode(buf, (size_t)n, m);

	if (ret == -EPROTONOSUPPORT) {
		pr_err("handshake: peer speaks another protocol version (ours is %u)",
		       RDMIG_PROTO_VERSION);
		return ret;
	}
	if (ret < 0) {
		pr_err("handshake: malformed message from peer (%d bytes) while waiting for %s", n,
		       rdmig_msg_type_name(want));
		return -EBADMSG;
	}
	if (m->type == RDMIG_MSG_ERROR) {
		pr_err("handshake: peer refused: %s", m->u.error.text);
		return m->u.error.code == EACCES ? -EACCES : -ECONNREFUSED;
	}
	if (m->type != want) {
		pr_err("handshake: expected %s, got %s", rdmig_msg_type_name(want),
		       rdmig_msg_type_name(m->type));
		return -EBADMSG;
	}
	return 0;
}

static void send_error(struct rdmig_conn *c, int code, const char *text)
{
	uint8_t buf[RDMIG_HDR_LEN + 4 + RDMIG_ERRTEXT_MAX];
	int n = rdmig_msg_encode_error(buf, sizeof(buf), code, text);

	if (n > 0 && c->ops->send(c, buf, (size_t)n) < 0)
		pr_debug("could not tell the peer: %s", text);
}

static int send_auth(struct rdmig_conn *c, const uint8_t mac[RDMIG_MAC_LEN])
{
	uint8_t buf[RDMIG_HDR_LEN + RDMIG_MAC_LEN];
	int n = rdmig_msg_encode_auth(buf, sizeof(buf), mac);

	return n < 0 ? n : c->ops->send(c, buf, (size_t)n);
}

int rdmig_handshake(struct rdmig_conn *c, const struct rdmig_tp_opts *o, uint8_t role)
{
	const int timeout = o->handshake_timeout_ms > 0 ? o->handshake_timeout_ms : 5000;
	const long long deadline = now_ms() + timeout;
	const uint32_t page = (uint32_t)sysconf(_SC_PAGESIZE);
	uint8_t nonce[RDMIG_NONCE_LEN], peer_nonce[RDMIG_NONCE_LEN];
	uint8_t mac[RDMIG_MAC_LEN], want[RDMIG_MAC_LEN];
	uint8_t buf[512];
	struct rdmig_token tok;
	struct rdmig_msg m;
	uint8_t peer_role;
	int n, ret;

	ret = rdmig_token_load(o->token_file, &tok);
	if (ret < 0)
		return ret;
	if (getrandom(nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce)) {
		ret = -EIO;
		goto out_wipe;
	}

	n = rdmig_msg_encode_hello(buf, sizeof(buf), page, role, nonce);
	ret = n < 0 ? n : c->ops->send(c, buf, (size_t)n);
	if (ret < 0)
		goto out_wipe;
	ret = recv_expect(c, buf, sizeof(buf), deadline, RDMIG_MSG_HELLO, &m);
	if (ret < 0)
		goto out_wipe;
	if (m.u.hello.page_size != page) {
		pr_err("handshake: peer's page size is %u, ours %u", m.u.hello.page_size, page);
		send_error(c, EPROTO, "page sizes differ");
		ret = -EPROTO;
		goto out_wipe;
	}
	peer_role = m.u.hello.role;
	if (peer_role == role) {
		pr_err("handshake: peer claims our own role");
		send_error(c, EPROTO, "both sides claim the same role");
		ret = -EPROTO;
		goto out_wipe;
	}
	memcpy(peer_nonce, m.u.hello.nonce, sizeof(peer_nonce));
	if (!memcmp(peer_nonce, nonce, sizeof(nonce))) {
		/* our own nonce coming back: a reflection, never a coincidence */
		send_error(c, EACCES, "authentication failed");
		ret = -EACCES;
		goto out_wipe;
	}

	/*
	 * The connector proves itself first; the listener answers with its own proof
	 * only after checking the connector's, so a peer without the token learns
	 * nothing but a nonce and "authentication failed". The connector then
	 * checks the listener's proof and confirms with AUTH_OK.
	 */
	ret = auth_mac(&tok, role, nonce, peer_nonce, mac);
	if (ret < 0)
		goto out_wipe;
	if (role == RDMIG_ROLE_CONNECTOR) {
		ret = send_auth(c, mac);
		if (ret < 0)
			goto out_wipe;
	}
	ret = recv_expect(c, buf, sizeof(buf), deadline, RDMIG_MSG_AUTH, &m);
	if (ret < 0)
		goto out_wipe;
	ret = auth_mac(&tok, peer_role, peer_nonce, nonce, want);
	if (ret < 0)
		goto out_wipe;
	if (CRYPTO_memcmp(want, m.u.auth.mac, RDMIG_MAC_LEN) != 0) {
		pr_err("handshake: the peer does not hold our token (authentication failed)");
		send_error(c, EACCES, "authentication failed");
		ret = -EACCES;
		goto out_wipe;
	}
	if (role == RDMIG_ROLE_LISTENER) {
		ret = send_auth(c, mac);
		if (ret < 0)
			goto out_wipe;
		/* the connector may still reject our proof */
		ret = recv_expect(c, buf, sizeof(buf), deadline, RDMIG_MSG_AUTH_OK, &m);
	} else {
		n = rdmig_msg_encode_empty(buf, sizeof(buf), RDMIG_MSG_AUTH_OK);
		ret = n < 0 ? n : c->ops->send(c, buf, (size_t)n);
	}
out_wipe:
	rdmig_token_wipe(&tok);
	OPENSSL_cleanse(mac, sizeof(mac));
	OPENSSL_cleanse(want, sizeof(want));
	return ret;
}
