// sentencepiece_shim.cc: the C interface of sentencepiece_shim.h over the SentencePiece library.
#include "sentencepiece_shim.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct SpmModel {
    sentencepiece::SentencePieceProcessor sp;
    std::vector<std::string> pieces;
    std::vector<int> types;
    bool strips = true;     // add_dummy_prefix || remove_extra_whitespaces
    bool strips_all = false; // remove_extra_whitespaces
    std::string unk_surface = " \xE2\x81\x87 ";
};

static void set_err(char *err, size_t errlen, const std::string &msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg.c_str());
}

extern "C" SpmModel *spm_load(const void *data, size_t n, char *err, size_t errlen) {
    try {
        SpmModel *m = new SpmModel();
        auto st = m->sp.LoadFromSerializedProto(std::string((const char *)data, n));
        if (!st.ok()) {
            set_err(err, errlen, std::string("SentencePiece: cannot load the model: ") + st.ToString());
            delete m;
            return nullptr;
        }
        int np = m->sp.GetPieceSize();
        m->pieces.reserve(np);
        m->types.reserve(np);
        int probe = -1; /* a normal piece that starts with U+2581 */
        for (int i = 0; i < np; i++) {
            m->pieces.push_back(m->sp.IdToPiece(i));
            int ty = SPM_PIECE_NORMAL;
            if (m->sp.IsUnknown(i)) ty = SPM_PIECE_UNKNOWN;
            else if (m->sp.IsControl(i)) ty = SPM_PIECE_CONTROL;
            else if (m->sp.IsUnused(i)) ty = SPM_PIECE_UNUSED;
            else if (m->sp.IsByte(i)) ty = SPM_PIECE_BYTE;
            m->types.push_back(ty);
            if (ty == SPM_PIECE_NORMAL && probe < 0 && m->pieces[i].size() > 3 &&
                m->pieces[i].compare(0, 3, "\xE2\x96\x81") == 0)
                probe = i;
        }
        /* Does decoding drop the leading space of the first piece (add_dummy_prefix or
         * remove_extra_whitespaces in the normalizer spec)? Ask the library itself. */
        m->strips = true;
        if (probe >= 0) {
            std::string out;
            if (m->sp.Decode(std::vector<int>{probe}, &out).ok())
                m->strips = out.empty() || out[0] != ' ';
        }
        /* With remove_extra_whitespaces every leading space piece is dropped, not just the first:
         * only visible after the piece that is a lone U+2581. */
        int ws = m->sp.PieceToId("\xE2\x96\x81");
        if (m->strips && probe >= 0 && ws >= 0 && ws < np && m->types[ws] == SPM_PIECE_NORMAL &&
            m->pieces[ws] == "\xE2\x96\x81") {
            std::string out;
            if (m->sp.Decode(std::vector<int>{ws, probe}, &out).ok())
                m->strips_all = out.empty() || out[0] != ' ';
        }
        int unk = m->sp.unk_id();
        if (unk >= 0) {
            std::string out;
            if (m->sp.Decode(std::vector<int>{unk}, &out).ok()) m->unk_surface = out;
        }
        return m;
    } catch (const std::exception &e) {
        set_err(err, errlen, std::string("SentencePiece: ") + e.what());
        return nullptr;
    }
}

extern "C" void spm_free(SpmModel *m) { delete m; }
extern "C" int spm_n_vocab(const SpmModel *m) { return m->sp.GetPieceSize(); }
extern "C" int spm_bos_id(const SpmModel *m) { return m->sp.bos_id(); }
extern "C" int spm_eos_id(const SpmModel *m) { return m->sp.eos_id(); }
extern "C" int spm_unk_id(const SpmModel *m) { return m->sp.unk_id(); }
extern "C" int spm_pad_id(const SpmModel *m) { return m->sp.pad_id(); }
extern "C" int spm_strips_leading_space(const SpmModel *m) { return m->strips ? (m->strips_all ? 2 : 1) : 0; }
extern "C" const char *spm_unk_surface(const SpmModel *m, size_t *len) {
    *len = m->unk_surface.size();
    return m->unk_surface.data();
}

extern "C" int spm_piece_info(const SpmModel *m, int id, const char **piece, size_t *len) {
    if (id < 0 || id >= (int)m->pieces.size()) {
        *piece = "";
        *len = 0;
        return 0;
    }
    *piece = m->pieces[id].data();
    *len = m->pieces[id].size();
    return m->types[id];
}

extern "C" long spm_encode(SpmModel *m, const char *text, size_t len, int **ids, size_t *cap,
                           char *err, size_t errlen) {
    try {
        std::vector<int> out;
        auto st = m->sp.Encode(std::string(text, len), &out);
        if (!st.ok()) {
            set_err(err, errlen, std::string("SentencePiece: ") + st.ToString());
            return -1;
        }
        if (out.size() > *cap) {
            size_t nc = *cap ? *cap : 256;
            while (nc < out.size()) nc *= 2;
            int *p = (int *)realloc(*ids, nc * sizeof(int));
            if (!p) {
                set_err(err, errlen, "SentencePiece: out of memory");
                return -1;
            }
            *ids = p;
            *cap = nc;
        }
        if (!out.empty()) memcpy(*ids, out.data(), out.size() * sizeof(int));
        return (long)out.size();
    } catch (const std::exception &e) {
        set_err(err, errlen, std::string("SentencePiece: ") + e.what());
        return -1;
    }
}
