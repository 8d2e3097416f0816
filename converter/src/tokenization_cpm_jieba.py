# Written by cpm-convert into every port that has a tokenizer (converter/src/tokenization_cpm_jieba.py).
"""CPM-LM's original tokenizer as a transformers `PreTrainedTokenizer`.

The pipeline of CPM-Generate's `data_utils/tokenization_gpt2.py`: jieba (default dictionary,
HMM on) cuts the text, each segment gets " " -> U+2582 and "\\n" -> U+2583, the segments are
joined with " " and sentencepiece encodes the result. Decoding is sentencepiece's decode with
every space removed, then U+2582 -> " " and U+2583 -> "\\n". No special token is ever added, and
special tokens written in the text are not matched: "<eod>" in text is cut by jieba like any
text, as in the original.

transformers' own `CpmTokenizer` does not do this (it never runs jieba on `encode` and appends
`<sep>` and `<cls>`), so its ids differ from the ones CPM was trained on.

Needs `jieba` and `sentencepiece`. Load with
`AutoTokenizer.from_pretrained(path, trust_remote_code=True)`.
"""

import os
import shutil

from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "spiece.model"}

_TRANSLATE = str.maketrans(" \n", "\u2582\u2583")


class CpmJiebaTokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file,
        unk_token="<unk>",
        bos_token=None,
        eos_token=None,
        pad_token=None,
        **kwargs,
    ):
        import jieba
        import sentencepiece as spm

        self.vocab_file = vocab_file
        self.sp_model = spm.SentencePieceProcessor(model_file=vocab_file)
        # A private jieba with the default dictionary: a user dictionary loaded into the global
        # one would change the cuts, and CPM used none.
        self.jieba = jieba.Tokenizer()
        # The original never appends anything and never matches special tokens in text.
        kwargs["split_special_tokens"] = True
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            **kwargs,
        )

    @property
    def vocab_size(self):
        return self.sp_model.get_piece_size()

    def get_vocab(self):
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def sp_input(self, text):
        """What the original hands sentencepiece for `text`."""
        segments = self.jieba.cut(text, cut_all=False, HMM=True)
        return " ".join(s.translate(_TRANSLATE) for s in segments)

    def tokenize(self, text, **kwargs):
        # The whole text goes through the pipeline: no added-token split before it.
        kwargs.pop("split_special_tokens", None)
        text, kwargs = self.prepare_for_tokenization(text, **kwargs)
        return self._tokenize(text)

    def _tokenize(self, text, **kwargs):
        # Pieces through ids, so that unknown text becomes the unk piece and maps back to its id.
        ids = self.sp_model.encode(self.sp_input(text))
        return [self.sp_model.id_to_piece(i) for i in ids]

    def _convert_token_to_id(self, token):
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self.sp_model.id_to_piece(index)

    @staticmethod
    def _untranslate(text):
        return text.replace(" ", "").replace("\u2582", " ").replace("\u2583", "\n")

    def convert_tokens_to_string(self, tokens):
        return self._untranslate(self.sp_model.decode_pieces(tokens))

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        token_ids = [int(i) for i in token_ids]
        if skip_special_tokens:
            special = set(self.all_special_ids)
            token_ids = [i for i in token_ids if i not in special]
        # Ids of the model go to sentencepiece together (as the original decodes); an added token
        # beyond it is its own text.
        out, run = [], []
        for i in token_ids:
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            out.append(self._untranslate(self.sp_model.decode(run)))
            run = []
            added = self._added_tokens_decoder.get(i)
            out.append(added.content if added is not None else self.unk_token or "")
        out.append(self._untranslate(self.sp_model.decode(run)))
        return "".join(out)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        if token_ids_1 is None:
            return list(token_ids_0)
        return list(token_ids_0) + list(token_ids_1)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        return [0] * (len(token_ids_0) + (len(token_ids_1) if token_ids_1 else 0))

    def save_vocabulary(self, save_directory, filename_prefix=None):
        if not os.path.isdir(save_directory):
            raise ValueError(f"{save_directory}: not a directory")
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        out = os.path.join(save_directory, name)
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        return (out,)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["sp_model"] = None
        state["jieba"] = None
        return state

    def __setstate__(self, d):
        import jieba
        import sentencepiece as spm

        self.__dict__ = d
        self.sp_model = spm.SentencePieceProcessor(model_file=self.vocab_file)
        self.jieba = jieba.Tokenizer()
