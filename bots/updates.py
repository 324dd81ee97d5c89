"""Telegram's updates as the webhook listener reads them: a strict schema and what it means.

Sources: the Bot API's Update, Message, MessageEntity, ChatMemberUpdated, ChatMember,
MessageOrigin, Chat and User objects (core.telegram.org/bots/api).

The schema (:class:`TgUpdate`) is strict: integers are JSON integers (not strings, booleans
or floats), ids and dates within the Bot API's ranges, one payload per update, text ≤ 4096
and caption ≤ 1024 characters, no NUL character. Fields we do not read are accepted and
ignored; a message's unknown fields are kept only to name its kind
(:meth:`TgMessage.service_kind`).

What the listener does with each kind (``docs/telegram.md`` has the table):

- :func:`update_kind`: the payload's name (``message``, ``my_chat_member``, ``poll``...).
- a message with content (text, a caption, media) enters the conversation; a message
  without (a member joined, the title changed, the group migrated, a pin...) is a service
  message (:meth:`TgMessage.service_kind`) and only changes the chat's state.
- :meth:`TgMessage.speaker`: who speaks. A person may speak as a chat (an anonymous group
  admin: ``from`` is GroupAnonymousBot and ``sender_chat`` the group; a linked channel's
  post: ``sender_chat`` the channel); those are people, not bots.
- :meth:`TgMessage.mentions`: usernames mentioned, from ``entities`` (offsets in UTF-16
  code units) with the ``@username`` of the text as a fallback when no entity came.
- :meth:`TgMessage.reply_target`: the message it replies to, except a forum topic's root
  (Telegram sets ``reply_to_message`` to the topic's creation message on every topic
  message that replies to nothing else).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

#: Bot API: an Integer field is 32-bit signed unless it says it "may have more than 32
#: significant bits" (message_id, update_id, date do not).
INT32_MAX = 2**31 - 1
#: Bot API, Chat.id and User.id: "at most 52 significant bits".
ID52_MAX = 2**52
#: Bot API: a message's text is 1-4096 characters, a caption 0-1024 (sendMessage,
#: sendPhoto). Python counts code points, never more than Telegram's UTF-16 units.
TEXT_MAX = 4096
CAPTION_MAX = 1024
#: Longest name, username or title stored (the ``sender_name`` and chat title columns).
NAME_MAX = 255
#: Most entities read from one message (a 4096-character text holds at most that many).
ENTITIES_MAX = TEXT_MAX
#: Telegram's service accounts (Bot API, Message.from: "For backward compatibility, if the
#: message was sent on behalf of a chat, the field contains a fake sender user in
#: non-channel chats"): GroupAnonymousBot (an anonymous admin), Channel_Bot (a member
#: sending as a channel) and Telegram (777000: a linked channel's automatic forward).
ANONYMOUS_ADMIN_ID = 1087968824
CHANNEL_BOT_ID = 136817688
TELEGRAM_SERVICE_ID = 777000
#: Fields that make a message content (it enters the conversation); any other message is
#: a service message (Bot API, Message).
CONTENT_FIELDS = frozenset({
    "text", "caption", "photo", "sticker", "document", "voice", "video", "video_note",
    "audio", "animation", "contact", "location", "venue", "poll", "dice", "game", "story",
    "paid_media", "invoice", "checklist",
})
#: Payloads of an Update (Bot API, Update), besides ``update_id``.
PAYLOADS = frozenset({
    "message", "edited_message", "channel_post", "edited_channel_post",
    "business_connection", "business_message", "edited_business_message",
    "deleted_business_messages", "message_reaction", "message_reaction_count",
    "inline_query", "chosen_inline_result", "callback_query", "shipping_query",
    "pre_checkout_query", "purchased_paid_media", "poll", "poll_answer", "my_chat_member",
    "chat_member", "chat_join_request", "chat_boost", "removed_chat_boost",
})
_STRICT = ConfigDict(extra="ignore", strict=True)
_USERNAME = re.compile(r"(?<![\w@])@([A-Za-z][A-Za-z0-9_]{3,31})\b")


def _no_nul(value: str | None) -> str | None:
    """Refuse a NUL character (PostgreSQL's text type cannot hold one)."""
    if value is not None and "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
TgId = Annotated[int, Field(ge=-ID52_MAX, le=ID52_MAX)]
MessageId = Annotated[int, Field(ge=1, le=INT32_MAX)]
Date = Annotated[int, Field(ge=0, le=INT32_MAX)]


class TgUser(BaseModel):
    """The part of Telegram's ``User`` the listener reads."""

    model_config = _STRICT
    id: TgId
    is_bot: bool = False
    first_name: Text = Field(default="", max_length=NAME_MAX)
    last_name: Text | None = Field(default=None, max_length=NAME_MAX)
    username: Text | None = Field(default=None, max_length=NAME_MAX)

    def display_name(self) -> str:
        """First and last name, or the username, or the id."""
        full = " ".join(p for p in (self.first_name, self.last_name) if p)
        return full or self.username or str(self.id)


class TgChat(BaseModel):
    """The part of Telegram's ``Chat`` the listener reads."""

    model_config = _STRICT
    id: TgId
    type: Text = Field(max_length=32)
    title: Text | None = Field(default=None, max_length=NAME_MAX)
    username: Text | None = Field(default=None, max_length=NAME_MAX)
    is_forum: bool = False


class TgReplyRef(BaseModel):
    """A replied-to message, by id (with the fields that tell a forum topic's root)."""

    model_config = _STRICT
    message_id: MessageId
    forum_topic_created: dict[str, Any] | None = None


class TgEntity(BaseModel):
    """A ``MessageEntity``: ``offset`` and ``length`` count UTF-16 code units."""

    model_config = _STRICT
    type: Text = Field(max_length=32)
    offset: int = Field(ge=0, le=2 * TEXT_MAX)
    length: int = Field(ge=1, le=2 * TEXT_MAX)
    user: TgUser | None = None


class TgOrigin(BaseModel):
    """A ``MessageOrigin`` (a forward's origin): ``user``, ``hidden_user``, ``chat`` or
    ``channel``."""

    model_config = _STRICT
    type: Text = Field(max_length=32)
    date: Date = 0
    sender_user: TgUser | None = None
    sender_user_name: Text | None = Field(default=None, max_length=NAME_MAX)
    sender_chat: TgChat | None = None
    chat: TgChat | None = None
    author_signature: Text | None = Field(default=None, max_length=NAME_MAX)

    def name(self) -> str:
        """Who the forwarded message came from, as a person would read it."""
        if self.sender_user is not None:
            return self.sender_user.display_name()
        chat = self.chat or self.sender_chat
        if chat is not None:
            return chat.title or chat.username or str(chat.id)
        return self.sender_user_name or "hidden"


def utf16_slice(text: str, offset: int, length: int) -> str:
    """``text``'s part at ``offset`` for ``length``, both in UTF-16 code units (how Telegram
    counts entity offsets: Bot API, MessageEntity). Out of range: what is in range."""
    units = text.encode("utf-16-le")
    return units[2 * offset: 2 * (offset + length)].decode("utf-16-le", errors="ignore")


class TgMessage(BaseModel):
    """The part of Telegram's ``Message`` the listener reads; unknown fields are kept to name
    a service message's kind."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    message_id: MessageId
    date: Date
    chat: TgChat
    from_user: TgUser | None = Field(default=None, alias="from")
    sender_chat: TgChat | None = None
    author_signature: Text | None = Field(default=None, max_length=NAME_MAX)
    text: Text | None = Field(default=None, max_length=TEXT_MAX)
    caption: Text | None = Field(default=None, max_length=CAPTION_MAX)
    entities: list[TgEntity] | None = Field(default=None, max_length=ENTITIES_MAX)
    caption_entities: list[TgEntity] | None = Field(default=None, max_length=ENTITIES_MAX)
    reply_to_message: TgReplyRef | None = None
    message_thread_id: MessageId | None = None
    is_topic_message: bool = False
    is_automatic_forward: bool = False
    forward_origin: TgOrigin | None = None
    photo: list[Any] | None = None
    sticker: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    voice: dict[str, Any] | None = None
    new_chat_members: list[TgUser] | None = Field(default=None, max_length=1000)
    left_chat_member: TgUser | None = None
    new_chat_title: Text | None = Field(default=None, max_length=NAME_MAX)
    migrate_to_chat_id: TgId | None = None
    migrate_from_chat_id: TgId | None = None

    def kind(self) -> str:
        """``text`` or the kind of a content message without text (``photo``...)."""
        if self.text is not None:
            return "text"
        for name in sorted(CONTENT_FIELDS - {"text", "caption"}):
            if getattr(self, name, None) is not None or name in (self.model_extra or {}):
                return name
        return "other"

    def service_kind(self) -> str | None:
        """None for a content message (it has a field of :data:`CONTENT_FIELDS`); else the
        service message's kind: its first field that is not a common one
        (``new_chat_members``, ``migrate_to_chat_id``, ``pinned_message``...)."""
        fields = set(self.model_fields_set) | set(self.model_extra or {})
        fields = {("from" if f == "from_user" else f) for f in fields}
        if fields & CONTENT_FIELDS:
            return None
        common = {"message_id", "date", "chat", "from", "sender_chat", "author_signature",
                  "reply_to_message", "message_thread_id", "is_topic_message",
                  "is_automatic_forward", "forward_origin", "entities", "caption_entities",
                  "edit_date", "has_protected_content", "sender_boost_count",
                  "sender_business_bot", "business_connection_id", "via_bot",
                  "is_from_offline", "media_group_id", "link_preview_options",
                  "reply_markup", "effect_id", "show_caption_above_media",
                  "has_media_spoiler", "external_reply", "quote", "reply_to_story"}
        rest = sorted(fields - common)
        return rest[0] if rest else "empty"

    def speaker(self) -> tuple[int, str, str | None, bool]:
        """Who speaks: ``(sender id, display name, username, is a person)``.

        A message sent on behalf of a chat (``sender_chat``: an anonymous admin speaking as
        the group, a member speaking as a channel, a linked channel's post) is a person's,
        named by the author's signature or the chat's title. A bot's is not a person's.
        """
        if self.sender_chat is not None:
            chat = self.sender_chat
            name = self.author_signature or chat.title or chat.username or str(chat.id)
            return chat.id, name, chat.username, True
        sender = self.from_user
        if sender is None:  # a channel post: the channel speaks
            return self.chat.id, self.chat.title or "channel", self.chat.username, True
        return sender.id, sender.display_name(), sender.username, not sender.is_bot

    def body(self) -> str:
        """The text, or the caption, or empty."""
        return self.text if self.text is not None else (self.caption or "")

    def mentions(self) -> tuple[str, ...]:
        """Usernames mentioned (lowercase, no ``@``), in order, once each: ``mention``
        entities (read at their UTF-16 offsets) and ``text_mention`` entities' users (their
        username, else ``id:<user id>``); without entities, each ``@username`` of the text."""
        body = self.body()
        entities = self.entities if self.text is not None else self.caption_entities
        found: list[str] = []
        if entities:
            for e in entities:
                if e.type == "mention":
                    name = utf16_slice(body, e.offset, e.length).lstrip("@").lower()
                    if name:
                        found.append(name)
                elif e.type == "text_mention" and e.user is not None:
                    found.append((e.user.username or f"id:{e.user.id}").lower())
        else:
            found = [m.group(1).lower() for m in _USERNAME.finditer(body)]
        return tuple(dict.fromkeys(found))

    def reply_target(self) -> int | None:
        """The id of the message this one replies to; None for none and for a forum
        topic's root (Telegram links every topic message to its topic's creation message,
        Bot API, Message.reply_to_message and message_thread_id)."""
        ref = self.reply_to_message
        if ref is None:
            return None
        if ref.forum_topic_created is not None or (
                self.is_topic_message and ref.message_id == self.message_thread_id):
            return None
        return ref.message_id

    def thread(self) -> int | None:
        """The forum topic's thread id (None outside a topic)."""
        return self.message_thread_id if self.is_topic_message else None


class TgChatMember(BaseModel):
    """A ``ChatMember``: its ``status`` and ``user`` (``can_send_messages`` when
    restricted)."""

    model_config = _STRICT
    status: Text = Field(max_length=32)
    user: TgUser
    can_send_messages: bool = True


class TgChatMemberUpdated(BaseModel):
    """A ``ChatMemberUpdated`` (``my_chat_member`` / ``chat_member``)."""

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    chat: TgChat
    from_user: TgUser = Field(alias="from")
    date: Date
    old_chat_member: TgChatMember
    new_chat_member: TgChatMember


class TgUpdate(BaseModel):
    """The part of Telegram's ``Update`` the listener reads; other payloads (a
    ``callback_query``, a ``poll``...) are named by :func:`update_kind` and not read, but an
    update carries at most one payload (Bot API, Update: "At most one of the optional
    parameters can be present in any given update")."""

    model_config = ConfigDict(extra="allow", strict=True)
    update_id: int = Field(ge=0, le=INT32_MAX)
    message: TgMessage | None = None
    edited_message: TgMessage | None = None
    my_chat_member: TgChatMemberUpdated | None = None
    chat_member: TgChatMemberUpdated | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_payload(cls, data: Any) -> Any:
        if isinstance(data, dict):
            payloads = sorted(k for k in data if k != "update_id")
            if len(payloads) > 1:
                raise ValueError(f"an update carries one payload, got {', '.join(payloads)}")
        return data

    def kind(self) -> str:
        """The payload's name (``message``, ``my_chat_member``, ``poll``...): ``none`` for an
        update without one, ``unknown`` for a name the Bot API does not list
        (:data:`PAYLOADS`)."""
        for name in ("message", "edited_message", "my_chat_member", "chat_member"):
            if getattr(self, name) is not None:
                return name
        extra = list(self.model_extra or {})
        if not extra:
            return "none"
        return extra[0] if extra[0] in PAYLOADS else "unknown"
