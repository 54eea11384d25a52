"""Repositories: the only code that speaks SQL. Each file keeps its SQL beside the method that runs it."""

from webapp.repositories.idempotency import IdempotencyRepository
from webapp.repositories.orders import OrderRepository
from webapp.repositories.products import ProductRepository
from webapp.repositories.users import UserRepository

__all__ = ["IdempotencyRepository", "OrderRepository", "ProductRepository", "UserRepository"]
