"""The thin layer over python-digitalocean 1.17 that the DigitalOcean provider uses.

Every python-digitalocean object made here gets the shared :class:`ApiSession` as its
``_session``, so its GET and DELETE requests are rate-limited and retried. The endpoint comes
only from the environment variable ``DIGITALOCEAN_END_POINT`` (ending in ``/v2/``).
python-digitalocean reads it for every object it makes, including the ones it makes internally,
while its constructor argument ``end_point`` does not reach those.

Creates bypass python-digitalocean: version 1.17 sends POST through the module-level
``requests.post``, outside any session, and ``Droplet.create_multiple`` keeps only the first
action id. :meth:`DOClient.create_droplets` posts through the same session (rate-limited,
429s retried, never repeated after the request may have arrived) and wraps the response in
``digitalocean.Droplet`` objects.
"""

from __future__ import annotations

import os
from urllib.parse import quote

import digitalocean

from swarmlab.doapi.session import ApiSession

DEFAULT_END_POINT = "https://api.digitalocean.com/v2/"
END_POINT_VARIABLE = "DIGITALOCEAN_END_POINT"
TOKEN_VARIABLE = "DIGITALOCEAN_ACCESS_TOKEN"  # noqa: S105 - a variable name, not a token
TIMEOUT_VARIABLE = "PYTHON_DIGITALOCEAN_REQUEST_TIMEOUT_SEC"
MAX_NAMES_PER_CREATE = 10


class DOClient:
    """DigitalOcean API calls the provider needs; each is one request unless its docstring names more.

    Args:
        token: the API token; kept out of ``repr`` and of every error message.
        session: the rate-limited session every request goes through.

    Raises:
        ValueError: ``DIGITALOCEAN_END_POINT`` is set but does not end in ``/v2/``.
    """

    def __init__(self, token: str, session: ApiSession):
        self._token = token
        self.session = session
        self.end_point = os.environ.get(END_POINT_VARIABLE, DEFAULT_END_POINT)
        if not self.end_point.endswith("/v2/"):
            raise ValueError(
                f"{END_POINT_VARIABLE} is {self.end_point!r}; it must end in /v2/, e.g. http://127.0.0.1:8080/v2/"
            )
        self.manager = self._wrap(digitalocean.Manager)

    def __repr__(self) -> str:
        return f"DOClient(end_point={self.end_point!r})"

    def _wrap(self, cls, **attributes):
        return cls(token=self._token, _session=self.session, **attributes)

    def account(self) -> digitalocean.Account:
        """Return the account (``GET /v2/account``): ``droplet_limit``, ``status``."""
        account = self._wrap(digitalocean.Account)
        account.load()
        return account

    def regions(self) -> list[digitalocean.Region]:
        """Return every region (``GET /v2/regions``, paginated)."""
        return self.manager.get_all_regions()

    def sizes(self) -> list[digitalocean.Size]:
        """Return every size (``GET /v2/sizes``, paginated)."""
        return self.manager.get_all_sizes()

    def image(self, slug: str) -> digitalocean.Image:
        """Return the image with this slug (``GET /v2/images/{slug}``)."""
        image = self._wrap(digitalocean.Image, slug=slug)
        image.load(use_slug=True)
        return image

    def ssh_key(self, id_or_fingerprint: str) -> digitalocean.SSHKey:
        """Return one SSH key by id or fingerprint (``GET /v2/account/keys/{key}``).

        Fetching keys one by one avoids ``GET /v2/account/keys``, which allows only 10
        requests per minute.
        """
        if id_or_fingerprint.isdigit():
            key = self._wrap(digitalocean.SSHKey, id=int(id_or_fingerprint))
        else:
            key = self._wrap(digitalocean.SSHKey, fingerprint=id_or_fingerprint)
        key.load()
        return key

    def count_droplets(self) -> int:
        """Return how many droplets the account has, from ``meta.total`` of a one-item page."""
        data = self.manager.get_data("droplets/", params={"per_page": 1, "page": 1})
        return int(data["meta"]["total"])

    def droplets_by_tag(self, tag: str) -> list[digitalocean.Droplet]:
        """Return the droplets with this tag: one paginated list, 200 per page."""
        return self.manager.get_all_droplets(params={"per_page": 200}, tag_name=tag)

    def create_droplets(
        self,
        names: list[str],
        *,
        size: str,
        image: str,
        region: str,
        ssh_keys: list[str],
        tags: list[str],
        user_data: str,
        vpc_uuid: str | None = None,
    ) -> list[digitalocean.Droplet]:
        """Create up to ten droplets with one ``POST /v2/droplets``.

        Raises:
            UncertainOutcomeError: the request may have created the droplets; list by tag
                before creating these names again.
            DOApiError: the API rejected the request (e.g. 422 over the droplet limit).
        """
        if not 1 <= len(names) <= MAX_NAMES_PER_CREATE:
            raise ValueError(f"{len(names)} names; one create request takes 1 to 10")
        body: dict = {
            "names": names,
            "region": region,
            "size": size,
            "image": image,
            "ssh_keys": [int(key) if key.isdigit() else key for key in ssh_keys],
            "tags": tags,
            "user_data": user_data,
            "ipv6": False,
            "monitoring": False,
        }
        if vpc_uuid:
            body["vpc_uuid"] = vpc_uuid
        response = self.session.post(
            self.end_point + "droplets",
            json=body,
            headers={"Authorization": f"Bearer {self._token}"},
        )
        data = response.json()
        action_ids = [link["id"] for link in data.get("links", {}).get("actions", [])]
        droplets = []
        for position, item in enumerate(data["droplets"]):
            droplet = self._wrap(digitalocean.Droplet, **item)
            # The API returns one create action per droplet, in the order of the names.
            if len(action_ids) == len(data["droplets"]):
                droplet.action_ids = [action_ids[position]]
            else:
                droplet.action_ids = list(action_ids)
            droplets.append(droplet)
        return droplets

    def delete_droplets_by_tag(self, tag: str) -> None:
        """Destroy every droplet with this tag (``DELETE /v2/droplets?tag_name=``, 204)."""
        # python-digitalocean sends DELETE parameters as a JSON body, so the tag goes in the URL.
        self.manager.get_data(f"droplets?tag_name={quote(tag)}", type=digitalocean.baseapi.DELETE)
