"""An auth manager with per-DAG rights, as FAB's DAG-level permissions or Keycloak's resources give them: Airflow's
simple auth manager (its users, roles and login), where a team's user may read and edit only their team's DAG.

``AIRFLOW__CORE__AUTH_MANAGER=tests.per_dag_auth.PerDagAuthManager`` with
``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=alice:user,bob:user,vic:viewer``: alice has ``t_team_a``, bob
``t_team_b``, and vic (a Viewer) reads every DAG and edits none.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

TEAMS = {"alice": "t_team_a", "bob": "t_team_b"}


class PerDagAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if not super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details):
            return False
        team = TEAMS.get(user.get_name())
        dag_id = getattr(details, "id", None)
        return team is None or dag_id is None or dag_id == team
